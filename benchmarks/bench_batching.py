"""What continuous batching buys in-process, and what a backtrack costs inside a batch.

* aggregate decode tokens/s of the batch decoder with B running rows vs one row (B = 2, 4, 8,
  16), on the 4x512 random Llama, greedy, every row the same length of output;
* model forwards per step with and without rows rewinding in the batch (goal: the same, 1.0);
* evaluation-style decoding (many short requests): all rows in one batch decoder vs one request
  at a time through the same decoder.

Both sides of every ratio run in this process, one after the other, on the same model.
Run: `make bench` or `python -m benchmarks bench_batching`.
"""

from __future__ import annotations

import statistics
import time

import torch

from backtrack.batch import BatchDecoder, decode_all
from backtrack.params import GenerationParams
from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config
from backtrack.tokens import backtrack_token_id

NEW_TOKENS = 64
ROWS = (2, 4, 8, 16)
REPEATS = 3
EVAL_REQUESTS = 64


def _model():
    tokenizer = build_char_tokenizer()
    config = tiny_llama_config(
        len(tokenizer), hidden_size=512, num_layers=4, num_heads=8, max_positions=4096
    )
    return build_tiny_llama(config), tokenizer


def _prompts(rows: int) -> list[list[int]]:
    """Prompts of different lengths, as concurrent users send."""
    return [[1, *range(5, 5 + 4 + 3 * (index % 5))] for index in range(rows)]


def _decode_seconds(model, tokenizer, bt: int, rows: int) -> float:
    """Seconds to decode NEW_TOKENS for each of `rows` rows running together."""
    params = GenerationParams(max_new_tokens=NEW_TOKENS, backtrack_policy="never", ignore_eos=True)
    decoder = BatchDecoder(model, tokenizer, bt)
    for prompt in _prompts(rows):
        decoder.add(prompt, params)
    decoder.prefill()
    start = time.perf_counter()
    while decoder.rows:
        decoder.step()
    return time.perf_counter() - start


def _aggregate_speedups(model, tokenizer, bt: int) -> dict:
    figures: dict = {}
    _decode_seconds(model, tokenizer, bt, 2)  # warm-up
    for rows in ROWS:
        single = statistics.median(_decode_seconds(model, tokenizer, bt, 1) for _ in range(REPEATS))
        batched = statistics.median(
            _decode_seconds(model, tokenizer, bt, rows) for _ in range(REPEATS)
        )
        figures[f"decoder_aggregate_speedup_{rows}_rows"] = rows * single / batched
    figures["decoder_tokens_per_s_1_row"] = NEW_TOKENS / single
    return figures


def _forwards_per_step(model, tokenizer, bt: int, rewind_every: int | None) -> float:
    """Forwards per decode step with 8 rows, a quarter of them rewinding every few steps."""
    params = GenerationParams(
        max_new_tokens=48, backtrack_policy="never", ignore_eos=True, max_backtracks=1000
    )
    decoder = BatchDecoder(model, tokenizer, bt)
    rows = [decoder.add(prompt, params) for prompt in _prompts(8)]
    decoder.step()
    forwards, steps, rewound = 0, 0, 0
    for step in range(40):
        if rewind_every and step % rewind_every == 0:
            for row in rows[:2]:
                if not row.finished and row.visible_ids:
                    row.backtrack()
        report = decoder.step()
        forwards, steps, rewound = (
            forwards + report.forwards,
            steps + 1,
            rewound + report.rewound_rows,
        )
    assert not rewind_every or rewound > 0
    return forwards / steps


def _evaluation_speedup(model, tokenizer, bt: int) -> float:
    params = GenerationParams(max_new_tokens=8, ignore_eos=True)
    requests = [(prompt, params) for prompt in _prompts(EVAL_REQUESTS)]

    def batched() -> None:
        list(decode_all(model, tokenizer, bt, requests, max_rows=EVAL_REQUESTS))

    def one_at_a_time() -> None:
        list(decode_all(model, tokenizer, bt, requests, max_rows=1))

    times: dict[str, list[float]] = {"batched": [], "single": []}
    for _ in range(REPEATS):
        for name, function in (("batched", batched), ("single", one_at_a_time)):
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["single"]) / statistics.median(times["batched"])


def run() -> dict:
    torch.manual_seed(0)
    model, tokenizer = _model()
    bt = backtrack_token_id(tokenizer)
    assert bt is not None
    figures: dict = {"model": "llama 4x512, greedy", "threads": torch.get_num_threads()}
    with torch.inference_mode():
        figures.update(_aggregate_speedups(model, tokenizer, bt))
        plain = _forwards_per_step(model, tokenizer, bt, None)
        rewinding = _forwards_per_step(model, tokenizer, bt, 3)
        figures["forwards_per_step_no_rewinds"] = plain
        figures["forwards_per_step_with_rewinding_rows"] = rewinding
        figures["rewind_forward_ratio"] = rewinding / plain
        figures[f"evaluation_speedup_{EVAL_REQUESTS}_requests"] = _evaluation_speedup(
            model, tokenizer, bt
        )
    return figures
