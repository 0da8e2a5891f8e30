"""The evaluation's exact-match figures, measured through a running server's HTTP API.

    make serve &                                             # or any server on the checkpoint
    python -m training.evaluate_http --checkpoint checkpoints/default --url http://127.0.0.1:8000

Each held-out problem is one `POST /generate` carrying the parameters and the seed
`training.evaluate` gives it in-process (room for EOS: `max_new_tokens` 4 more than the answer;
exact match on the whole text). A seeded request decodes the same alone or in any batch, so the
figures must equal `make eval`'s to the problem: a difference is a serving bug (prompt encoding,
seeding, stopping), never noise. The table says whether they match `eval.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from backtrack.params import BacktrackPolicy, GenerationParams
from clients.client import AsyncBacktrackClient
from training.config import config_from_dict
from training.evaluate import TEMPERATURES, decoding_params, held_out_problems
from training.tasks import Problem

CONCURRENCY = 32
"""Requests in flight: enough for the server to batch them, as `make eval` does in-process."""


def request_body(problem: Problem, params: GenerationParams) -> dict[str, Any]:
    """`/generate`'s body for one problem: every parameter the in-process evaluation decodes
    with, from the vocabulary itself, so the server cannot fall back on a default of its own."""
    return {"inputs": problem.prompt, "parameters": params.model_dump(exclude_none=True)}


async def served_texts(
    url: str, bodies: list[dict[str, Any]], api_key: str | None = None, timeout: float = 300.0
) -> list[str]:
    """`generated_text` for every body through the project's client, CONCURRENCY requests at a
    time (a refusal it does not retry raises)."""
    gate = asyncio.Semaphore(CONCURRENCY)
    async with AsyncBacktrackClient(url, api_key=api_key, timeout=timeout) as client:

        async def one(body: dict[str, Any]) -> str:
            async with gate:
                answer = await client.generate(body["inputs"], details=False, **body["parameters"])
                return answer.generated_text

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def accuracy_over_http(
    url: str,
    problems: list[Problem],
    lengths: list[int],
    temperature: float,
    policy: BacktrackPolicy,
    api_key: str | None = None,
) -> float:
    bodies = [
        request_body(problem, decoding_params(temperature, policy, "rewind", index, length))
        for index, (problem, length) in enumerate(zip(problems, lengths, strict=True))
    ]
    texts = asyncio.run(served_texts(url, bodies, api_key))
    correct = sum(text == problem.response for text, problem in zip(texts, problems, strict=True))
    return correct / max(1, len(problems))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/default")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--problems", type=int, default=None)
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    args = parser.parse_args(argv)
    directory = Path(args.checkpoint)
    metadata = json.loads((directory / "backtrack.json").read_text())
    problems = held_out_problems(config_from_dict(metadata["training_config"]), args.problems)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    lengths = [
        len(tokenizer.encode(problem.response, add_special_tokens=False)) + 4
        for problem in problems
    ]
    in_process_path = directory / "eval.json"
    in_process = json.loads(in_process_path.read_text()) if in_process_path.exists() else None
    print(f"{len(problems)} held-out problems through {args.url}/generate")
    print("exact match      plain  BT,rewind  same as make eval")
    for temperature in args.temperatures:
        key = f"T={temperature:g}"
        plain = accuracy_over_http(args.url, problems, lengths, temperature, "never", args.api_key)
        rewind = accuracy_over_http(
            args.url, problems, lengths, temperature, "argmax", args.api_key
        )
        same = "-"
        if in_process and key in in_process["accuracy"] and args.problems is None:
            row = in_process["accuracy"][key]
            same = "yes" if (row["plain"], row.get("rewind")) == (plain, rewind) else "no"
        print(f"  {key:8s}      {100 * plain:5.1f}%  {100 * rewind:8.1f}%  {same}")


if __name__ == "__main__":
    main()
