"""Soak: thousands of random good and bad requests against one server process, and what it costs.

    python -m benchmarks bench_soak        # or `make bench-soak`; 20 s on 2 idle cores, 3 min if busy
    BENCH_SOAK_REQUESTS=600 python -m benchmarks bench_soak    # a shorter run

One real server (`python -m server --checkpoint DIR ...`, a subprocess) on a random tiny Llama made
here (`backtrack.tiny.save_tiny_checkpoint`, plus a strict chat template that refuses unknown
roles and roles that do not alternate), with a small queue (`max_concurrent_requests` 4,
`max_queue_size` 4) and small limits. An asyncio httpx client sends `BENCH_SOAK_REQUESTS`
(default 2,200) requests in rounds: `CONCURRENCY` clients draw random requests over the native
(`/generate`), TGI (`/generate_stream`, `/`) and OpenAI (`/v1/completions`,
`/v1/chat/completions`) routes, streaming and not, with random valid parameters or one of the bad
inputs the server must refuse (too many or too long stop strings, huge `max_backtracks`, a
negative or fractional seed, `n` past 16, a token id past the vocabulary,
temperature 1e-40, NaN and infinity, oversize bodies with and without a length, bad and
non-alternating chat roles, made-up paths and methods, broken JSON, ...). A quarter of the
streams are dropped by the client after 1-3 events. Each round ends with a burst of
`BURST` simultaneous long requests (past the 8 places of slots + queue), then waits for the
server to go idle.

Checked (the run fails, after writing its figures, if one does not hold):

* `status_5xx`: responses with a 5xx status, and `stream_errors`: streams that carried an error
  event, a `error`/`timeout` finish reason or ended without their final frame: both 0;
* `hangs`: requests not answered within `CLIENT_TIMEOUT` seconds (transport errors included): 0;
* `unexpected_status`: a bad input not refused with its 4xx, or a good one refused (429 aside): 0;
* `kv_*_at_end`: the KV gauges (`backtrack_kv_cache_tokens`, `_slots`, `_reserved_tokens`) and
  the running and queue gauges back to 0 once idle, after every round and at the end, every
  dropped stream included (`server_cancelled` counts the cancellations the server saw);
* `false_429`: 429s the queue did not justify. The server's answer says how many requests were
  running and waiting; that count must reach slots + queue, and must not exceed what the client
  could have had in the engine while the request was open: its own good generation requests
  open at the time, plus the streams it dropped in that window or the `DROP_GRACE` seconds before
  (a dropped stream leaves the engine at the next step once the server sees the disconnect);
* `server_timeouts`, `server_errors`, `server_log_problems`: requests the server itself ended with
  `timeout` or `error` (`backtrack_requests_total`), tracebacks and ERROR lines in its log: 0;
* the edge phases (`benchmarks.soak_edges`): a probe's latency during a scoring flood within 3x
  its quiet latency, slow-header connections closed by `header_timeout`, the engine idle beside
  clients that never read, and a server whose step fails turning unhealthy (503) after
  `max_consecutive_faults` failed requests, with no hang and no false 200;
* `rss_growth`: the server's VmRSS (`/proc/<pid>/status`), highest over the first thousand
  requests against highest over the last thousand: under 5%, after `WARM_UP` good requests that
  are not counted (memory grows while new shapes are first seen, then flattens: `warm_up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks import soak_edges
from benchmarks.soak_corpus import (
    BURST,
    CONCURRENCY,
    SERVER_SETTINGS,
    STRICT_CHAT_TEMPLATE,
    Case,
    random_case,
    valid_case,
)
from benchmarks.soak_judge import (
    TERMINAL_FINISH_REASONS,
    Outcome,
    Tracker,
    failed_checks,
    parse_metrics,
    summarise,
)
from benchmarks.soak_probes import vm_rss_kb, wait_idle
from clients.sse import aiter_events
from server.process import running_server

RUN_BY_DEFAULT = False
"""Minutes, not seconds: run it by name (`make bench-soak`)."""

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
REQUESTS = int(os.environ.get("BENCH_SOAK_REQUESTS", "2200"))
SEED = int(os.environ.get("BENCH_SOAK_SEED", "0"))
ROUNDS = 9
WARM_UP = 1000
CLIENT_TIMEOUT = 30.0
"""A request not answered (to its last frame) within this many seconds is a hang."""


async def send(client: httpx.AsyncClient, case: Case, tracker: Tracker) -> Outcome:
    outcome = Outcome(case)
    outcome.opened = time.monotonic()
    if case.generation:
        tracker.opened(outcome)
    try:
        await asyncio.wait_for(_exchange(client, case, outcome, tracker), CLIENT_TIMEOUT)
    except TimeoutError:
        outcome.status, outcome.error = None, "timeout"
    except httpx.HTTPError as error:
        outcome.status, outcome.error = None, f"{type(error).__name__}: {error}"
    finally:
        outcome.closed = time.monotonic()
        outcome.seconds = outcome.closed - outcome.opened
        if case.generation:
            tracker.closed(outcome)
    return outcome


async def _chunks(raw: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(raw), 4096):
        yield raw[start : start + 4096]


async def _exchange(
    client: httpx.AsyncClient, case: Case, outcome: Outcome, tracker: Tracker
) -> None:
    kwargs: dict[str, Any] = {}
    if case.raw is not None:
        kwargs["content"] = _chunks(case.raw) if case.chunked else case.raw
        kwargs["headers"] = {"content-type": "application/json"}
    elif case.body is not None:
        kwargs["json"] = case.body
    async with client.stream(case.method, case.path, **kwargs) as response:
        outcome.status = response.status_code
        is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
        if response.status_code != 200 or not is_sse:
            body = await response.aread()
            outcome.text = body.decode(errors="replace")[:500]
            outcome.complete = True
            if response.status_code == 200 and case.generation:
                outcome.finish_reason = json_finish_reason(outcome.text)
            return
        async for message in aiter_events(response.aiter_bytes()):
            outcome.events += 1
            read_frame(case.path, message.data, outcome)
            if case.drop_after is not None and outcome.events >= case.drop_after:
                if not outcome.complete:
                    outcome.dropped = True
                    tracker.drops.extend([time.monotonic()] * case.places)
                return  # leaving the block closes the connection mid-stream


def read_frame(path: str, data: str, outcome: Outcome) -> None:
    """Note a stream's errors, finish reason and final frame, per route family."""
    if data == "[DONE]":
        outcome.complete = True
        return
    frame = json.loads(data)
    if "error" in frame and frame.get("type") != "response.failed":
        outcome.stream_error = True
    if path == "/v1/responses":
        read_responses_frame(frame, outcome)
    elif path.startswith("/v1/"):
        for choice in frame.get("choices", []):
            if choice.get("finish_reason"):
                outcome.finish_reason = own_finish_reason(choice)
    elif "finish_reason" in frame:  # the native `done` event
        outcome.finish_reason = frame["finish_reason"]
        outcome.complete = True
    elif frame.get("generated_text") is not None:  # TGI's last line
        outcome.finish_reason = own_finish_reason(frame.get("details") or {})
        outcome.complete = True
    if outcome.finish_reason in TERMINAL_FINISH_REASONS:
        outcome.stream_error = True


def read_responses_frame(frame: dict, outcome: Outcome) -> None:
    """The Responses API's typed events: its stream ends with its final `response` object."""
    kind = frame.get("type", "")
    if kind in ("response.completed", "response.incomplete", "response.failed"):
        outcome.finish_reason = responses_finish_reason(frame["response"])
        outcome.complete = True
    elif kind == "error":
        outcome.stream_error = True


def responses_finish_reason(response: dict) -> str:
    """A `response` object's end in the server's own words (`error` for a failed one)."""
    if response.get("status") == "failed":
        return "error"
    details = response.get("incomplete_details") or {}
    return details.get("reason") or response.get("status") or "unknown"


def json_finish_reason(text: str) -> str | None:
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("object") == "response":
        return responses_finish_reason(answer)
    if isinstance(answer, dict) and answer.get("choices"):
        return own_finish_reason(answer["choices"][0])
    if isinstance(answer, dict) and isinstance(answer.get("details"), dict):
        return own_finish_reason(answer["details"])
    return None


def own_finish_reason(fields: dict) -> str:
    """The server's own reason (TGI's and OpenAI's fields say `length` for a timeout)."""
    return fields.get("backtrack_finish_reason") or fields.get("finish_reason") or "unknown"


# -- the server --------------------------------------------------------------------------------


def save_checkpoint(directory: Path) -> Path:
    """The random tiny Llama, with a strict chat template that its prompts go through."""
    from backtrack.checkpoint import load_metadata, save_metadata
    from backtrack.tiny import save_tiny_checkpoint

    save_tiny_checkpoint(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = STRICT_CHAT_TEMPLATE
    config_path.write_text(json.dumps(config))
    metadata = load_metadata(directory)
    metadata.prompt_format = "chat"  # a `plain` checkpoint joins chat messages, never templating
    save_metadata(directory, metadata)
    return directory


# -- the run -----------------------------------------------------------------------------------


async def soak(url: str, pid: int, total: int, rng: random.Random) -> dict[str, Any]:
    tracker = Tracker()
    outcomes: list[Outcome] = []
    residuals: list[float] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    async with (
        httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT, limits=limits) as client,
        httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as observer,
    ):
        await warm_up(client, rng)
        await wait_idle(observer)
        rss: list[tuple[int, int]] = [(0, vm_rss_kb(pid))]  # after the warm-up (`warm_up`)
        stop_sampling = asyncio.Event()

        async def sample_rss() -> None:
            while not stop_sampling.is_set():
                rss.append((len(outcomes), vm_rss_kb(pid)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_sampling.wait(), 0.25)

        sampler = asyncio.create_task(sample_rss())
        start = time.monotonic()
        per_round = max(math.ceil(total / ROUNDS) - BURST, 1)

        async def worker(turns: Iterator[int]) -> None:
            for _ in turns:
                outcomes.append(await send(client, random_case(rng), tracker))

        while len(outcomes) < total:
            turns = iter(range(min(per_round, total - len(outcomes))))
            await asyncio.gather(*(worker(turns) for _ in range(CONCURRENCY)))
            if len(outcomes) < total:
                burst = [valid_case(rng, "burst") for _ in range(min(BURST, total - len(outcomes)))]
                outcomes.extend(await asyncio.gather(*(send(client, c, tracker) for c in burst)))
            idle = await wait_idle(observer)
            residuals.append(max(abs(value) for value in idle.values()))
        seconds = time.monotonic() - start
        stop_sampling.set()
        await sampler
        rss.append((len(outcomes), vm_rss_kb(pid)))
        idle = await wait_idle(observer)
        metrics = parse_metrics((await observer.get("/metrics")).text)
    return summarise(outcomes, tracker.drops, rss, metrics, idle, residuals, seconds)


async def edges(url: str, port: int) -> dict[str, Any]:
    """The edge phases on the soaked server (`benchmarks.soak_edges`), idle again after each."""
    figures = await soak_edges.scoring_flood(url)
    figures.update(await soak_edges.slow_senders(url, port))
    figures.update(await soak_edges.slow_readers(url, port))
    return figures


async def warm_up(client: httpx.AsyncClient, rng: random.Random) -> None:
    """`WARM_UP` good requests before anything is counted: the server's memory grows while it
    first sees each shape (prompt lengths, batch widths: oneDNN's primitive cache, the
    allocator's pools) and then flattens (567 -> 719 MiB over the first thousand good requests,
    760 at 4,000, 791 at 16,000), so the RSS windows start once that has happened."""
    tracker = Tracker()
    cases = iter([valid_case(rng) for _ in range(WARM_UP)])

    async def worker() -> None:
        for case in cases:
            await send(client, case, tracker)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def log_problems(text: str) -> int:
    """Tracebacks and ERROR lines the server logged."""
    return sum(1 for line in text.splitlines() if "Traceback" in line or " ERROR " in line)


def run() -> dict[str, Any]:
    rng = random.Random(SEED)
    threads = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as scratch:
        checkpoint = save_checkpoint(Path(scratch) / "checkpoint")
        log = Path(scratch) / "server.log"
        with running_server(
            checkpoint, 120.0, threads, log_path=log, stop_timeout=30.0, **SERVER_SETTINGS
        ) as handle:
            figures = asyncio.run(soak(handle.url, handle.process.pid, REQUESTS, rng))
            figures.update(asyncio.run(edges(handle.url, handle.port)))
            figures["server_alive_at_end"] = handle.process.poll() is None
        figures["server_exit_status"] = handle.process.returncode
        figures["server_log_problems"] = log_problems(log.read_text(errors="replace"))
        figures.update(soak_edges.big_slow_bodies(checkpoint))
        figures.update(soak_edges.failing_step(checkpoint, SERVER_SETTINGS))
    failures = failed_checks(figures) + soak_edges.edge_failures(figures)
    if not figures["server_alive_at_end"]:
        failures.append("the server died during the run")
    figures["checks"] = "all hold" if not failures else "FAILED: " + "; ".join(failures)
    if failures:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "bench_soak.json").write_text(json.dumps(figures, indent=2) + "\n")
        raise AssertionError("soak checks failed:\n" + "\n".join(failures))
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
