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
* `rss_growth`: the server's VmRSS (`/proc/<pid>/status`), highest over the first thousand
  requests against highest over the last thousand: under 5%.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.process import ServerHandle, free_port, wait_healthy

RUN_BY_DEFAULT = False
"""Minutes, not seconds: run it by name (`make bench-soak`)."""

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
REQUESTS = int(os.environ.get("BENCH_SOAK_REQUESTS", "2200"))
SEED = int(os.environ.get("BENCH_SOAK_SEED", "0"))
ROUNDS = 9
CONCURRENCY = 6
BURST = 16
CLIENT_TIMEOUT = 30.0
"""A request not answered (to its last frame) within this many seconds is a hang."""
DROP_GRACE = 2.0
DROP_SHARE = 0.25
RSS_WINDOW = 1000
MAX_RSS_GROWTH = 0.05
MAX_RUNNING, MAX_QUEUE = 4, 4
CAPACITY = MAX_RUNNING + MAX_QUEUE
MAX_NEW_TOKENS = 32
MAX_REQUEST_BYTES = 16384
MAX_INPUT_CHARS = 2048
MAX_STOP_SEQUENCES, MAX_STOP_CHARS = 4, 256
MAX_BACKTRACKS = 64
SERVER_SETTINGS: dict[str, Any] = {
    "max_concurrent_requests": MAX_RUNNING,
    "max_queue_size": MAX_QUEUE,
    "max_new_tokens": MAX_NEW_TOKENS,
    "default_max_new_tokens": 8,
    "max_request_bytes": MAX_REQUEST_BYTES,
    "max_input_chars": MAX_INPUT_CHARS,
    "max_stop_sequences": MAX_STOP_SEQUENCES,
    "max_stop_sequence_chars": MAX_STOP_CHARS,
    "max_backtracks": MAX_BACKTRACKS,
    "max_backtrack_depth": 64,
    "request_timeout": 20,
    "health_stall_timeout": 30,
    "log_level": "warning",
}
STRICT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and loop.first %}{{ m['content'] }}\n"
    "{% elif m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}"
    "{% elif (m['role'] == 'user') != ((loop.index0 - (messages[0]['role'] == 'system')) % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant/user/...') }}"
    "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}={% endif %}"
)
"""Like Llama-2's and Mistral's: an optional system turn, then user and assistant alternating."""
ALPHABET = "0123456789+-*=() abcdefghijklmnopqrstuvwxyz"
GENERATION_PATHS = ("/generate", "/generate_stream", "/", "/v1/completions", "/v1/chat/completions")
OVERLOADED = re.compile(r"(\d+) requests running and (\d+) waiting")
TERMINAL_FINISH_REASONS = {"error", "timeout", "shutdown"}
"""Finish reasons that mean the server failed the request (nothing here shuts it down)."""


# -- the requests ------------------------------------------------------------------------------


@dataclass
class Case:
    """One request to send and what a correct server answers."""

    kind: str
    """`valid`, `burst`, or the name of the bad input."""
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None
    chunked: bool = False
    stream: bool = False
    drop_after: int | None = None
    """Close the stream after this many events (a client that leaves)."""
    expect: frozenset[int] = frozenset({200})

    @property
    def generation(self) -> bool:
        """A good generation request: it may reach the engine (and may get a 429)."""
        return self.kind in ("valid", "burst")


def prompt_text(rng: random.Random, low: int = 1, high: int = 24) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(low, high)))


def valid_options(rng: random.Random, openai: bool) -> dict[str, Any]:
    """Random parameters inside every range and limit (TGI names; OpenAI ones when `openai`)."""
    options: dict[str, Any] = {}
    sample = rng.random() < 0.6
    if openai:
        options["temperature"] = round(rng.uniform(0.3, 2.0), 3) if sample else 0
    else:
        options["do_sample"] = sample
        if sample:
            options["temperature"] = round(rng.uniform(0.3, 2.0), 3)
    optional = {
        "top_k": lambda: rng.randint(1, 60),
        "top_p": lambda: round(rng.uniform(0.05, 1.0), 3),
        "min_p": lambda: round(rng.uniform(0.0, 0.5), 3),
        "repetition_penalty": lambda: round(rng.uniform(0.5, 2.0), 3),
        "seed": lambda: rng.choice([0, 1, 2**64 - 1, rng.randrange(2**64)]),
        "stop": lambda: [prompt_text(rng, 1, 4) for _ in range(rng.randint(0, MAX_STOP_SEQUENCES))],
        "max_backtracks": lambda: rng.choice([0, 1, 4, 16, MAX_BACKTRACKS]),
        "max_backtrack_depth": lambda: rng.randint(1, 64),
        "mode": lambda: rng.choice(["rewind", "keep"]),
        "backtrack_policy": lambda: rng.choice(["argmax", "threshold", "sample", "never"]),
        "backtrack_threshold": lambda: round(rng.uniform(0.01, 0.99), 3),
        "hold_back_deletable": lambda: rng.random() < 0.5,
    }
    for name, make in optional.items():
        if rng.random() < 0.35:
            options[name] = make()
    if openai and rng.random() < 0.3:
        options["ignore_eos"] = True
    return options


def generation_body(
    rng: random.Random, path: str, stream: bool, options: dict[str, Any], new_tokens: int
) -> dict[str, Any]:
    """A request body for `path` carrying `options` (TGI names for the native and TGI routes)."""
    if path.startswith("/v1/"):
        body: dict[str, Any] = {**options, "max_tokens": new_tokens}
        if path == "/v1/chat/completions":
            body["messages"] = random_conversation(rng)
            if rng.random() < 0.3:
                body["max_completion_tokens"] = body.pop("max_tokens")
        else:
            body["prompt"] = rng.choice([prompt_text(rng), [prompt_text(rng)]])
        if stream:
            body["stream"] = True
            if rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
        return body
    parameters = {**options, "max_new_tokens": new_tokens}
    if rng.random() < 0.3:
        parameters["details"] = True
    body = {"inputs": prompt_text(rng), "parameters": parameters}
    if path != "/generate_stream" and (stream or rng.random() < 0.5):
        body["stream"] = stream
    return body


def random_conversation(rng: random.Random) -> list[dict[str, Any]]:
    turns = rng.choice([1, 1, 3])
    messages = [{"role": "system", "content": prompt_text(rng, 1, 8)}] if rng.random() < 0.3 else []
    for index in range(turns):
        role = "user" if index % 2 == 0 else "assistant"
        content: Any = prompt_text(rng, 1, 12)
        if rng.random() < 0.2:
            content = [{"type": "text", "text": content}]
        messages.append({"role": role, "content": content})
    return messages


def valid_case(rng: random.Random, kind: str = "valid") -> Case:
    path = rng.choice(GENERATION_PATHS)
    stream = path == "/generate_stream" or rng.random() < 0.5
    openai = path.startswith("/v1/")
    options = valid_options(rng, openai)
    drop = stream and rng.random() < DROP_SHARE
    if kind == "burst":
        new_tokens = MAX_NEW_TOKENS
        drop = False
        if openai:
            options["ignore_eos"] = True
    else:
        new_tokens = rng.randint(8, 24) if drop else rng.randint(1, 16)
    body = generation_body(rng, path, stream, options, new_tokens)
    return Case(
        kind,
        "POST",
        path,
        body,
        stream=stream,
        drop_after=rng.randint(1, 3) if drop else None,
        expect=frozenset({200, 429}),
    )


def _with(
    rng: random.Random, paths: tuple[str, ...] = GENERATION_PATHS, **changes: Any
) -> tuple[str, dict[str, Any]]:
    """A good body on a random route, with `changes` (TGI names) put where that route reads them."""
    path = rng.choice(paths)
    stream = path == "/generate_stream" or rng.random() < 0.5
    body = generation_body(rng, path, stream, {}, rng.randint(1, 8))
    target = body if path.startswith("/v1/") else body["parameters"]
    for name, value in changes.items():
        if path.startswith("/v1/") and name == "max_new_tokens":
            name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if path.startswith("/v1/") and name == "do_sample":
            continue
        target[name] = value
    return path, body


NATIVE_PATHS = tuple(path for path in GENERATION_PATHS if not path.startswith("/v1/"))


def bad_parameter(
    name: str, paths: tuple[str, ...] = GENERATION_PATHS, **changes: Any
) -> Callable[[random.Random], Case]:
    def make(rng: random.Random) -> Case:
        path, body = _with(rng, paths, **changes)
        return Case(name, "POST", path, body, expect=frozenset({422}))

    return make


def bad_raw(name: str, text: str) -> Callable[[random.Random], Case]:
    """A body that cannot be sent as JSON by a well-behaved client (NaN, Infinity)."""

    def make(rng: random.Random) -> Case:
        path, body = _with(rng, temperature=0.5, do_sample=True)
        raw = json.dumps(body).replace('"temperature": 0.5', f'"temperature": {text}')
        return Case(name, "POST", path, raw=raw.encode(), expect=frozenset({422}))

    return make


def oversize(chunked: bool) -> Callable[[random.Random], Case]:
    def make(rng: random.Random) -> Case:
        path, body = _with(rng)
        size = rng.randint(MAX_REQUEST_BYTES + 1, 3 * MAX_REQUEST_BYTES)
        key = "prompt" if path.startswith("/v1/") else "inputs"
        if path == "/v1/chat/completions":
            body["messages"] = [{"role": "user", "content": "1" * size}]
        else:
            body[key] = "1" * size
        kind = "oversize_chunked_body" if chunked else "oversize_body"
        return Case(
            kind,
            "POST",
            path,
            raw=json.dumps(body).encode(),
            chunked=chunked,
            expect=frozenset({413}),
        )

    return make


def long_prompt(chars: int, name: str) -> Callable[[random.Random], Case]:
    def make(rng: random.Random) -> Case:
        path, body = _with(rng)
        text = "".join(rng.choice(ALPHABET) for _ in range(chars))
        if path == "/v1/chat/completions":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt" if path.startswith("/v1/") else "inputs"] = text
        return Case(name, "POST", path, body, expect=frozenset({422}))

    return make


def chat(name: str, messages: list[dict[str, Any]]) -> Callable[[random.Random], Case]:
    def make(rng: random.Random) -> Case:
        body = {"messages": messages, "max_tokens": 4, "stream": rng.random() < 0.5}
        return Case(name, "POST", "/v1/chat/completions", body, expect=frozenset({422}))

    return make


def fixed(name: str, method: str, path: str, expect: int, **fields: Any) -> Callable[..., Case]:
    return lambda rng: Case(name, method, path, expect=frozenset({expect}), **fields)


def shaped(name: str, path: str, body: Any) -> Callable[[random.Random], Case]:
    return lambda rng: Case(name, "POST", path, body, expect=frozenset({422}))


BAD_INPUTS: tuple[Callable[[random.Random], Case], ...] = (
    bad_parameter("too_many_stop_strings", stop=[str(i) for i in range(MAX_STOP_SEQUENCES + 16)]),
    bad_parameter("long_stop_string", stop=["9" * (MAX_STOP_CHARS + 1)]),
    bad_parameter("empty_stop_string", stop=[""]),
    bad_parameter("huge_max_backtracks", max_backtracks=10**9),
    bad_parameter("huge_max_backtrack_depth", max_backtrack_depth=10**6),
    bad_parameter("seed_not_integral", seed=2.5),
    bad_parameter("negative_seed", seed=-1),
    # OpenAI's routes decode greedily below 0.01, as vLLM does: only TGI's refuse it
    bad_parameter("temperature_1e-40", NATIVE_PATHS, temperature=1e-40, do_sample=True),
    bad_parameter("negative_temperature", temperature=-1.0, do_sample=True),
    bad_raw("temperature_nan", "NaN"),
    bad_raw("temperature_infinity", "Infinity"),
    bad_parameter("top_p_out_of_range", top_p=1.5),
    bad_parameter("top_k_zero", top_k=0),
    bad_parameter("penalty_out_of_range", repetition_penalty=1000.0),
    bad_parameter("threshold_out_of_range", backtrack_threshold=1.5),
    bad_parameter("unknown_mode", mode="sideways"),
    bad_parameter("huge_max_new_tokens", max_new_tokens=10**30),
    # OpenAI completions take max_tokens 0 (echo scores the prompt alone): only TGI's refuse it
    bad_parameter("zero_max_new_tokens", NATIVE_PATHS, max_new_tokens=0),
    bad_parameter("wrong_type", seed="seven"),
    oversize(chunked=False),
    oversize(chunked=True),
    long_prompt(MAX_INPUT_CHARS + 500, "prompt_over_max_input_chars"),
    long_prompt(700, "prompt_over_max_input_tokens"),
    shaped("empty_prompt", "/generate", {"inputs": ""}),
    shaped("unknown_native_parameter", "/generate", {"inputs": "1", "parameters": {"foo": 1}}),
    shaped("unsupported_tgi_option", "/", {"inputs": "1", "parameters": {"watermark": True}}),
    shaped("n_over_16", "/v1/completions", {"prompt": "1", "n": 17}),
    shaped("unsupported_openai_option", "/v1/completions", {"prompt": "1", "best_of": 2}),
    shaped("token_id_past_vocabulary", "/v1/completions", {"prompt": [10**9]}),
    shaped("prompt_not_a_string", "/v1/completions", {"prompt": {"a": 1}}),
    chat("unknown_chat_role", [{"role": "robot", "content": "hi"}]),
    chat(
        "template_refuses_developer",
        [{"role": "developer", "content": "hi"}, {"role": "user", "content": "1+1"}],
    ),
    chat(
        "roles_not_alternating",
        [{"role": "user", "content": "1"}, {"role": "user", "content": "2"}],
    ),
    chat("no_messages", []),
    fixed("broken_json", "POST", "/generate", 422, raw=b'{"inputs": "1+1=", '),
    fixed("not_json", "POST", "/v1/completions", 400, raw=b"\xff\xfe not json"),
    fixed("deep_json", "POST", "/generate", 400, raw=b"[" * 10000),
    fixed("made_up_post_path", "POST", "/v2/generate", 404, body={"inputs": "1"}),
    fixed("made_up_v1_path", "POST", "/v1/embeddings", 404, body={"input": "1"}),
    fixed("made_up_get_path", "GET", "/admin/../../etc/passwd", 404),
    fixed("wrong_method", "GET", "/generate", 405),
    fixed("wrong_method_delete", "DELETE", "/v1/completions", 405),
    fixed("post_to_metrics", "POST", "/metrics", 405, body={}),
)
GOOD_READS = ("/health", "/info", "/metrics", "/v1/models")


def random_case(rng: random.Random) -> Case:
    """Half good generation requests, 40% bad inputs, 10% reads of the service routes."""
    draw = rng.random()
    if draw < 0.5:
        return valid_case(rng)
    if draw < 0.9:
        return rng.choice(BAD_INPUTS)(rng)
    return Case("read", "GET", rng.choice(GOOD_READS))


# -- the client ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    status: int | None = None
    """None: no answer (a hang or a transport error)."""
    error: str | None = None
    seconds: float = 0.0
    events: int = 0
    dropped: bool = False
    complete: bool = False
    """The answer ended with its final frame (or was not a stream)."""
    stream_error: bool = False
    finish_reason: str | None = None
    text: str = ""
    opened: float = 0.0
    closed: float = 0.0
    peak_open_others: int = 0
    """Most good generation requests of this client open at once while this one was."""


class Tracker:
    """Which good generation requests are open, and when streams were dropped."""

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.outcomes: dict[int, Outcome] = {}
        self.drops: list[float] = []

    def opened(self, outcome: Outcome) -> None:
        others = len(self.open)
        outcome.peak_open_others = others
        for key in self.open:
            peer = self.outcomes[key]
            peer.peak_open_others = max(peer.peak_open_others, others)
        self.open.add(id(outcome))
        self.outcomes[id(outcome)] = outcome

    def closed(self, outcome: Outcome) -> None:
        self.open.discard(id(outcome))
        self.outcomes.pop(id(outcome), None)


def count_in_window(times: Iterable[float], start: float, end: float) -> int:
    return sum(1 for moment in times if start <= moment <= end)


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
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            outcome.events += 1
            read_frame(case.path, line[5:].strip(), outcome)
            if case.drop_after is not None and outcome.events >= case.drop_after:
                if not outcome.complete:
                    outcome.dropped = True
                    tracker.drops.append(time.monotonic())
                return  # leaving the block closes the connection mid-stream


def read_frame(path: str, data: str, outcome: Outcome) -> None:
    """Note a stream's errors, finish reason and final frame, per route family."""
    if data == "[DONE]":
        outcome.complete = True
        return
    frame = json.loads(data)
    if "error" in frame:
        outcome.stream_error = True
    if path.startswith("/v1/"):
        for choice in frame.get("choices", []):
            if choice.get("finish_reason"):
                outcome.finish_reason = choice["finish_reason"]
    elif "finish_reason" in frame:  # the native `done` event
        outcome.finish_reason = frame["finish_reason"]
        outcome.complete = True
    elif frame.get("generated_text") is not None:  # TGI's last line
        details = frame.get("details") or {}
        outcome.finish_reason = details.get("finish_reason", "unknown")
        outcome.complete = True
    if outcome.finish_reason in TERMINAL_FINISH_REASONS:
        outcome.stream_error = True


def json_finish_reason(text: str) -> str | None:
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    if isinstance(answer, dict) and answer.get("choices"):
        return answer["choices"][0].get("finish_reason")
    if isinstance(answer, dict) and isinstance(answer.get("details"), dict):
        return answer["details"].get("finish_reason")
    return None


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


def server_command(checkpoint: Path, port: int) -> list[str]:
    command = [sys.executable, "-m", "server", "--checkpoint", str(checkpoint)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    for name, value in SERVER_SETTINGS.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition to `{'name{labels}': value}` (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values


def metric_sum(values: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for key, value in values.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{label}="{wanted}"' in rest for label, wanted in labels.items()):
            total += value
    return total


IDLE_GAUGES = (
    "backtrack_running_requests",
    "backtrack_queue_size",
    "backtrack_kv_cache_tokens",
    "backtrack_kv_cache_slots",
    "backtrack_kv_cache_reserved_tokens",
)


async def wait_idle(client: httpx.AsyncClient, timeout: float = 15.0) -> dict[str, float]:
    """The idle gauges once running and queued requests are 0 (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        values = parse_metrics((await client.get("/metrics")).text)
        gauges = {name: metric_sum(values, name) for name in IDLE_GAUGES}
        if not any(gauges.values()) or time.monotonic() > deadline:
            return gauges
        await asyncio.sleep(0.1)


# -- the figures -------------------------------------------------------------------------------


def judge_429(outcome: Outcome, drops: list[float]) -> str | None:
    """Why a 429 was not justified by a full queue, or None when it was."""
    match = OVERLOADED.search(outcome.text)
    if match is None:
        return "429 without the running/waiting counts"
    held = int(match.group(1)) + int(match.group(2))
    if held < CAPACITY:
        return f"429 with {held} requests held, fewer than {CAPACITY} places"
    dropped = count_in_window(drops, outcome.opened - DROP_GRACE, outcome.closed)
    bound = outcome.peak_open_others + dropped
    if held > bound:
        return f"429 with {held} requests held but at most {bound} could be"
    return None


def rss_growth(samples: list[tuple[int, int]], total: int, window: int = RSS_WINDOW) -> float:
    """Highest RSS over the last `window` requests against the highest over the first, minus 1.

    `samples` are (requests answered so far, RSS in kB)."""
    first = [rss for answered, rss in samples if answered <= window]
    last = [rss for answered, rss in samples if answered >= total - window]
    if not first or not last:
        raise ValueError("RSS samples do not cover both windows")
    return max(last) / max(first) - 1


def failed_checks(figures: dict[str, Any]) -> list[str]:
    """The reliability figures that do not hold, one line each (empty: all hold)."""
    failures = []
    zero = (
        "status_5xx",
        "hangs",
        "stream_errors",
        "unexpected_status",
        "false_429",
        "server_timeouts",
        "server_errors",
        "kv_cache_tokens_at_end",
        "kv_cache_slots_at_end",
        "kv_cache_reserved_tokens_at_end",
        "running_requests_at_end",
        "queue_size_at_end",
        "max_residual_between_rounds",
        "server_log_problems",
    )
    for name in zero:
        if figures.get(name, 0) != 0:
            failures.append(f"{name} is {figures[name]}, not 0")
    if figures["requests"] < 2000:
        failures.append(f"requests is {figures['requests']}, fewer than 2000")
    if not figures["rss_growth_pct"] < MAX_RSS_GROWTH * 100:
        failures.append(f"rss_growth_pct is {figures['rss_growth_pct']}, not under 5")
    if figures["status_429"] == 0:
        failures.append("no 429 at all: the bursts never filled the queue")
    if figures["dropped_streams"] == 0:
        failures.append("no stream was dropped")
    return failures


def summarise(
    outcomes: list[Outcome],
    drops: list[float],
    rss: list[tuple[int, int]],
    metrics: dict[str, float],
    idle: dict[str, float],
    residuals: list[float],
    seconds: float,
) -> dict[str, Any]:
    statuses = Counter(o.status for o in outcomes)
    streams = [o for o in outcomes if o.case.stream and o.status == 200]
    unexpected = [o for o in outcomes if o.status is not None and o.status not in o.case.expect]
    false_429 = [
        reason for o in outcomes if o.status == 429 and (reason := judge_429(o, drops)) is not None
    ]
    hangs = [o for o in outcomes if o.status is None]
    stream_errors = [
        o
        for o in outcomes
        if o.stream_error
        or (o.status == 200 and o.case.stream and not o.dropped and not o.complete)
        or (o.finish_reason in TERMINAL_FINISH_REASONS)
    ]
    finishes = Counter(o.finish_reason for o in outcomes if o.finish_reason)
    kinds = Counter(o.case.kind for o in outcomes)
    total = len(outcomes)
    growth = rss_growth(rss, total)
    first = max(kb for answered, kb in rss if answered <= RSS_WINDOW)
    last = max(kb for answered, kb in rss if answered >= total - RSS_WINDOW)
    latencies = sorted(o.seconds for o in outcomes if o.status is not None)
    figures: dict[str, Any] = {
        "requests": total,
        "seconds": round(seconds, 1),
        "requests_per_s": round(total / seconds, 1),
        "settings": (
            f"tiny llama 2x64, {MAX_RUNNING} slots + {MAX_QUEUE} queue, "
            f"max_new_tokens {MAX_NEW_TOKENS}, {CONCURRENCY} clients + bursts of {BURST}"
        ),
        "good_generation_requests": kinds["valid"] + kinds["burst"],
        "bad_input_requests": total - kinds["valid"] - kinds["burst"] - kinds["read"],
        "bad_input_kinds": len([k for k in kinds if k not in ("valid", "burst", "read")]),
        "service_reads": kinds["read"],
        "streams": sum(1 for o in outcomes if o.case.stream),
        "streams_answered_200": len(streams),
        "streams_told_to_drop": sum(1 for o in outcomes if o.case.drop_after is not None),
        "dropped_streams": sum(1 for o in outcomes if o.dropped),
        "dropped_share_of_200_streams": round(
            sum(1 for o in outcomes if o.dropped) / max(len(streams), 1), 3
        ),
        "status_2xx": sum(n for s, n in statuses.items() if s is not None and 200 <= s < 300),
        "status_4xx": sum(n for s, n in statuses.items() if s is not None and 400 <= s < 500),
        "status_429": statuses[429],
        "status_429_in_bursts": sum(
            1 for o in outcomes if o.status == 429 and o.case.kind == "burst"
        ),
        "status_5xx": sum(n for s, n in statuses.items() if s is not None and s >= 500),
        "statuses": ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=str)),
        "hangs": len(hangs),
        "hang_examples": "; ".join(f"{o.case.kind} {o.case.path}: {o.error}" for o in hangs[:3]),
        "stream_errors": len(stream_errors),
        "unexpected_status": len(unexpected),
        "unexpected_examples": "; ".join(
            f"{o.case.kind} {o.case.path} -> {o.status} {o.text[:120]}" for o in unexpected[:3]
        ),
        "false_429": len(false_429),
        "false_429_examples": "; ".join(false_429[:3]),
        "finish_reasons": ", ".join(f"{r}: {n}" for r, n in sorted(finishes.items())),
        "server_cancelled": int(
            metric_sum(metrics, "backtrack_requests_total", finish_reason="cancelled")
        ),
        "server_timeouts": int(
            metric_sum(metrics, "backtrack_requests_total", finish_reason="timeout")
        ),
        "server_errors": int(
            metric_sum(metrics, "backtrack_requests_total", finish_reason="error")
        ),
        "server_finished_requests": int(metric_sum(metrics, "backtrack_requests_total")),
        "latency_p50_s": round(latencies[len(latencies) // 2], 4),
        "latency_p99_s": round(latencies[int(len(latencies) * 0.99)], 4),
        "latency_max_s": round(latencies[-1], 3),
        "rss_first_1000_max_mib": round(first / 1024, 1),
        "rss_last_1000_max_mib": round(last / 1024, 1),
        "rss_growth_pct": round(growth * 100, 2),
        "max_residual_between_rounds": max(residuals, default=0.0),
    }
    for name, value in idle.items():
        short = name.removeprefix("backtrack_")
        figures[f"{short}_at_end"] = value
    return figures


# -- the run -----------------------------------------------------------------------------------


async def soak(url: str, pid: int, total: int, rng: random.Random) -> dict[str, Any]:
    tracker = Tracker()
    outcomes: list[Outcome] = []
    rss: list[tuple[int, int]] = [(0, vm_rss_kb(pid))]
    residuals: list[float] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
    async with (
        httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT, limits=limits) as client,
        httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as observer,
    ):
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


def log_problems(text: str) -> int:
    """Tracebacks and ERROR lines the server logged."""
    return sum(1 for line in text.splitlines() if "Traceback" in line or " ERROR " in line)


def run() -> dict[str, Any]:
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as scratch:
        checkpoint = save_checkpoint(Path(scratch) / "checkpoint")
        log = Path(scratch) / "server.log"
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        env["PYTHONUNBUFFERED"] = "1"
        with log.open("w") as sink:
            process = subprocess.Popen(
                server_command(checkpoint, port),
                cwd=REPO_ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        handle = ServerHandle(f"http://127.0.0.1:{port}", port, process, log)
        try:
            wait_healthy(handle, timeout=120.0)
            figures = asyncio.run(soak(handle.url, process.pid, REQUESTS, rng))
            figures["server_alive_at_end"] = process.poll() is None
        finally:
            exit_status = handle.terminate(timeout=30.0)
        figures["server_exit_status"] = exit_status
        figures["server_log_problems"] = log_problems(log.read_text(errors="replace"))
    failures = failed_checks(figures)
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
