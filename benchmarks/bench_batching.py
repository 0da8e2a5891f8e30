"""What batching the running requests into one forward per step would buy.

The server steps each running request with its own single-token forward. This measures, on the
same model and context length, one decode forward over B rows against B forwards of one row:
the ratio bounds the aggregate tokens/s a batched engine could reach with B concurrent streams.

Run: `make bench` or `python -m benchmarks bench_batching`.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import DynamicCache

from backtrack.decoder import forward_tokens
from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config

CONTEXT = 256
STEPS = 32
BATCHES = (2, 4, 8)


def _prefilled(model, rows: int) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.full((rows, CONTEXT), 5), past_key_values=cache, use_cache=True)
    return cache


def _batched_seconds(model, rows: int) -> float:
    """Seconds per step of one forward feeding one token to each of `rows` rows."""
    cache = _prefilled(model, rows)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(STEPS):
            model(
                input_ids=torch.full((rows, 1), 6),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
    return (time.perf_counter() - start) / STEPS


def _single_seconds(model) -> float:
    """Seconds per step of one forward feeding one token to one row (what the engine does)."""
    cache = _prefilled(model, 1)
    start = time.perf_counter()
    for _ in range(STEPS):
        forward_tokens(model, cache, [6])
    return (time.perf_counter() - start) / STEPS


def run() -> dict:
    tokenizer = build_char_tokenizer()
    config = tiny_llama_config(
        len(tokenizer), hidden_size=512, num_layers=4, num_heads=8, max_positions=4096
    )
    model = build_tiny_llama(config)
    _single_seconds(model), _batched_seconds(model, 2)  # warm-up
    figures: dict = {"model": "llama 4x512", "context_tokens": CONTEXT}
    for rows in BATCHES:
        single = statistics.median(_single_seconds(model) for _ in range(3))
        batched = statistics.median(_batched_seconds(model, rows) for _ in range(3))
        figures[f"aggregate_speedup_batch_{rows}"] = rows * single / batched
    return figures
