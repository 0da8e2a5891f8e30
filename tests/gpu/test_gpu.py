"""The CUDA path, end to end (`make test-gpu`): skipped on a machine without a GPU.

`BACKTRACK_TEST_DEVICE=cpu make test-gpu` runs the same checks on the CPU (a dry run of the
script on a machine without one).
"""

from __future__ import annotations

import os

import httpx
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from backtrack.batch import BatchDecoder
from backtrack.compiled import CompiledStep
from backtrack.params import GenerationParams
from backtrack.tiny import build_tiny_llama, tiny_llama_config
from clients.sse import iter_events
from server.process import running_server
from tests.backtrack.test_batch import FIXTURES, PLAN, comparable, run

DEVICE = os.environ.get("BACKTRACK_TEST_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE == "cuda" and not torch.cuda.is_available(), reason="no CUDA device: make test-gpu"
    ),
]


@pytest.fixture(scope="module")
def model(char_tokenizer):
    config = tiny_llama_config(
        len(char_tokenizer), hidden_size=128, num_layers=2, initializer_range=0.5
    )
    return build_tiny_llama(config).to(device=DEVICE, dtype=torch.bfloat16)


@pytest.mark.parametrize("compiled", [False, True])
@FIXTURES.__class__(parent=FIXTURES, max_examples=4)
@given(plans=st.lists(PLAN, min_size=2, max_size=8))
def test_batched_rows_decode_as_each_alone_in_bf16(
    model, char_tokenizer, backtrack_id, compiled, plans
):
    alone = [
        run(model, char_tokenizer, backtrack_id, [plan], 4, layout="slots")[0] for plan in plans
    ]
    together = run(model, char_tokenizer, backtrack_id, plans, 4, layout="slots", compiled=compiled)
    agree = sum(
        comparable(one.events) == comparable(other.events)
        for one, other in zip(alone, together, strict=True)
    )
    # bf16 sums in a different order per batch size: a near-tie may flip, but rarely
    assert agree >= len(plans) - 1


def test_the_compiled_step_runs_on_every_bucket(model, char_tokenizer, backtrack_id):
    decoder = BatchDecoder(model, char_tokenizer, backtrack_id, kv_layout="slots")
    step = CompiledStep(decoder.kv)
    step.warm_up(max_rows=16)
    compiled_at_start_up = step.compiles
    params = GenerationParams(max_new_tokens=40, backtrack_policy="never", ignore_eos=True)
    rows = [decoder.add([1, 5, 6 + index % 7], params) for index in range(11)]
    while decoder.rows:
        decoder.step()
    assert all(len(row.visible_ids) == 40 for row in rows)
    assert step.compiles == compiled_at_start_up  # serving never waits for a compile
    if DEVICE == "cuda":  # CUDA graphs need fixed shapes: the batch is padded to a bucket
        assert {size for size, _ in step.shapes} <= {1, 2, 4, 8, 16}


def test_the_server_answers_and_streams_on_the_device(tiny_checkpoint_dir):
    with running_server(
        tiny_checkpoint_dir, startup_timeout=300, device=DEVICE, dtype="bfloat16", compile="true"
    ) as server:
        info = httpx.get(f"{server.url}/info").json()
        assert (info["model_device_type"], info["model_dtype"]) == (DEVICE, "bfloat16")
        assert info["kv_layout"] == "slots" and info["compiled_step"]
        body = {"inputs": "12+34=", "parameters": {"max_new_tokens": 12, "details": True}}
        answer = httpx.post(f"{server.url}/generate", json=body, timeout=60).json()
        with httpx.stream("POST", f"{server.url}/generate_stream", json=body, timeout=60) as reply:
            events = list(iter_events(reply.iter_bytes()))
        assert events[-1].json()["generated_text"] == answer["generated_text"]
