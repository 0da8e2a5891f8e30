"""Through a real server's HTTP API, every held-out problem decodes as `make eval` decodes it."""

from __future__ import annotations

import asyncio

from backtrack.batch import decode_all, final_event
from server.process import running_server
from training.config import Config
from training.evaluate import decoding_params, held_out_problems
from training.evaluate_http import request_body, served_texts


def test_served_answers_equal_the_in_process_evaluation(tiny_checkpoint_dir, tiny_checkpoint):
    problems = held_out_problems(Config(), 12)
    params = [
        decoding_params(1.5, "argmax", "rewind", seed=index, length=len(problem.response) + 4)
        for index, problem in enumerate(problems)
    ]
    prompts = tiny_checkpoint.prompts
    requests = [(prompts.completion(p.prompt), q) for p, q in zip(problems, params, strict=True)]
    in_process = {
        index: final_event(events).generated_text
        for index, events in decode_all(
            tiny_checkpoint.model, tiny_checkpoint.tokenizer, tiny_checkpoint.backtrack_id, requests
        )
    }
    bodies = [request_body(p, q) for p, q in zip(problems, params, strict=True)]
    with running_server(tiny_checkpoint_dir) as server:
        served = asyncio.run(served_texts(server.url, bodies))
    assert served == [in_process[index] for index in range(len(problems))]
    assert len(set(served)) > 1  # sampled and seeded per problem, not one greedy answer
