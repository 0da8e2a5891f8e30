"""Serving overhead: one stream through HTTP + SSE vs the decoder called in-process.

    python -m benchmarks bench_http

Same checkpoint (a random Llama built here, wide enough that a forward is not negligible), same
prompt, greedy, same number of tokens, one process measuring both sides in turn. The server runs
as a real subprocess (`python -m server`, started by `server.process`) and is read with the
client's SSE parser (`clients.sse`); both sides must show the same tokens. Goal: the HTTP
stream keeps at least 0.9x of the in-process tokens/s. Time to first token is compared too.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from backtrack.checkpoint import (
    CheckpointMetadata,
    LoadedCheckpoint,
    load_checkpoint,
    save_metadata,
)
from backtrack.decoder import generate
from backtrack.events import TokenEvent, parse_event
from backtrack.params import GenerationParams
from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config
from backtrack.tokens import backtrack_token_id
from clients.sse import iter_events
from server.process import running_server

PROMPT = "123+456="
NEW_TOKENS = 200
REPEATS = 7
HIDDEN = 512
LAYERS = 4
THREADS = 1
"""Both sides use one intra-op thread, so they compete for the same compute."""


def save_checkpoint(directory: Path) -> Path:
    """A random Llama whose near-uniform logits never pick EOS: every run is NEW_TOKENS long."""
    tokenizer = build_char_tokenizer()
    config = tiny_llama_config(
        len(tokenizer), hidden_size=HIDDEN, num_layers=LAYERS, num_heads=8, max_positions=1024
    )
    build_tiny_llama(config, seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    bt_id = backtrack_token_id(tokenizer)
    assert bt_id is not None, "the char tokenizer registers the backtrack token"
    save_metadata(directory, CheckpointMetadata(backtrack_token_id=bt_id))
    return directory


@dataclass
class Run:
    """One stream: time to first token, total time, and the token ids it showed."""

    first: float = 0.0
    total: float = 0.0
    ids: list[int] = field(default_factory=list)

    def see(self, event: object, start: float) -> None:
        if isinstance(event, TokenEvent):
            self.ids.append(event.id)
            self.first = self.first or time.perf_counter() - start


def decode_in_process(loaded: LoadedCheckpoint, prompt_ids: list[int]) -> Run:
    params = GenerationParams(max_new_tokens=NEW_TOKENS)
    start, run = time.perf_counter(), Run()
    for event in generate(loaded.model, loaded.tokenizer, loaded.backtrack_id, prompt_ids, params):
        run.see(event, start)
    run.total = time.perf_counter() - start
    return run


def decode_over_http(client: httpx.Client) -> Run:
    """The same request through POST /generate, reading the native SSE stream with the client's
    SSE parser and the protocol's own event types."""
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": NEW_TOKENS}, "stream": True}
    start, run = time.perf_counter(), Run()
    with client.stream("POST", "/generate", json=body) as response:
        for message in iter_events(response.iter_bytes()):
            run.see(parse_event(message.event, message.data), start)
    run.total = time.perf_counter() - start
    return run


def measure(directory: Path, url: str) -> tuple[list[Run], list[Run]]:
    """Alternate the two sides run by run, so both see the same machine load."""
    loaded = load_checkpoint(directory, torch.device("cpu"), torch.float32)
    prompt_ids = list(loaded.tokenizer(PROMPT)["input_ids"])
    local, remote = [], []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            for repeat in range(REPEATS + 1):  # the first round warms up
                local_run = decode_in_process(loaded, prompt_ids)
                remote_run = decode_over_http(client)
                if repeat:
                    local.append(local_run)
                    remote.append(remote_run)
    finally:
        torch.set_num_threads(previous_threads)
    return local, remote


def summarise(runs: list[Run]) -> tuple[float, float, list[int]]:
    """Median tokens/s and median time to first token (ms); the tokens every run showed."""
    shown = {tuple(run.ids) for run in runs}
    assert len(shown) == 1, f"greedy runs showed different tokens: {len(shown)} variants"
    ids = list(shown.pop())
    rate = statistics.median(len(ids) / run.total for run in runs)
    ttft = statistics.median(run.first for run in runs) * 1000
    return rate, ttft, ids


def run() -> dict[str, float | int | str]:
    threads = {"OMP_NUM_THREADS": str(THREADS)}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as scratch:
        directory = save_checkpoint(Path(scratch))
        with running_server(directory, env=threads, max_new_tokens=NEW_TOKENS) as server:
            local, remote = measure(directory, server.url)
    local_rate, local_ttft, local_tokens = summarise(local)
    http_rate, http_ttft, http_tokens = summarise(remote)
    assert local_tokens == http_tokens, "both sides must generate the same tokens"
    return {
        "tokens_per_stream": len(local_tokens),
        "model": f"llama {LAYERS}x{HIDDEN}, {THREADS} thread(s), greedy",
        "inprocess_tokens_per_s": round(local_rate, 1),
        "http_sse_tokens_per_s": round(http_rate, 1),
        "http_vs_inprocess_ratio": round(http_rate / local_rate, 3),
        "inprocess_ttft_ms": round(local_ttft, 2),
        "http_ttft_ms": round(http_ttft, 2),
        "http_ttft_overhead_ms": round(http_ttft - local_ttft, 2),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
