"""The soak's corpus: the server it runs against and the requests it sends, good and bad.

`valid_case` draws a good generation request over every route (streaming or not, a quarter of
the streams dropped after 1-3 events); `BAD_INPUTS` are the inputs the server must refuse with
their 4xx; `random_case` mixes them with the service reads. Every limit here is one the server
is started with (`SERVER_SETTINGS`), so each case knows the answer a correct server gives.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CONCURRENCY = 6
BURST = 16
DROP_SHARE = 0.25
MAX_RUNNING, MAX_QUEUE = 4, 4
CAPACITY = MAX_RUNNING + MAX_QUEUE
MAX_NEW_TOKENS = 32
MAX_REQUEST_BYTES = 16384
MAX_INPUT_CHARS = 2048
MAX_STOP_SEQUENCES, MAX_STOP_CHARS = 4, 256
MAX_BACKTRACKS = 64
MAX_SCORED_LOGPROBS = 1024
MAX_CHOICES = 4
"""`max_request_share` 0.5 of the 8 places: the choices (prompts x n) one request may take."""
HEADER_TIMEOUT, BODY_TIMEOUT, SEND_TIMEOUT = 2.0, 2.0, 2.0
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
    "max_scored_logprobs": MAX_SCORED_LOGPROBS,
    "max_request_share": 0.5,
    "header_timeout": HEADER_TIMEOUT,
    "body_timeout": BODY_TIMEOUT,
    "sse_send_timeout": SEND_TIMEOUT,
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
GENERATION_PATHS = (
    "/generate",
    "/generate_stream",
    "/",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/responses",
)


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
    def places(self) -> int:
        """Engine places the request takes while it runs: one per choice (prompts x `n`)."""
        if not isinstance(self.body, dict):
            return 1
        prompt = self.body.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) and isinstance(prompt[0], str) else 1
        return prompts * int(self.body.get("n", 1))

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
    if path == "/v1/responses":
        conversation = [
            {**m, "content": [{"type": "input_text", "text": m["content"][0]["text"]}]}
            if isinstance(m["content"], list)
            else m
            for m in random_conversation(rng)
        ]
        text = rng.choice([prompt_text(rng), conversation])
        return {**options, "input": text, "max_output_tokens": new_tokens, "stream": stream}
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
            content = [{"type": "text", "text": content}]  # chat's part; Responses': input_text
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
    if kind == "valid" and path in SCORING_PATHS and rng.random() < SCORING_SHARE:
        body.update(scoring_fields(rng, path))
    return Case(
        kind,
        "POST",
        path,
        body,
        stream=stream,
        drop_after=rng.randint(1, 3) if drop else None,
        expect=frozenset({200, 429}),
    )


SCORING_PATHS = ("/v1/completions", "/v1/chat/completions")
SCORING_SHARE = 0.3


def scoring_fields(rng: random.Random, path: str) -> dict[str, Any]:
    """`logprobs` (with `echo`, or chat's `top_logprobs`) and a fan-out `n`, within the limits:
    at most MAX_CHOICES choices, and choices x scored tokens x (alternatives + 1) under
    MAX_SCORED_LOGPROBS for any prompt the corpus draws (24 characters, 16 new tokens)."""
    fields: dict[str, Any] = {"n": rng.randint(1, MAX_CHOICES)}
    if path == "/v1/chat/completions":
        return {**fields, "logprobs": True, "top_logprobs": rng.randint(0, 5)}
    return {**fields, "logprobs": rng.randint(0, 5), "echo": rng.random() < 0.5}


def _with(
    rng: random.Random, paths: tuple[str, ...] = GENERATION_PATHS, **changes: Any
) -> tuple[str, dict[str, Any]]:
    """A good body on a random route, with `changes` (TGI names) put where that route reads them."""
    path = rng.choice(paths)
    stream = path == "/generate_stream" or rng.random() < 0.5
    body = generation_body(rng, path, stream, {}, rng.randint(1, 8))
    target = body if path.startswith("/v1/") else body["parameters"]
    for name, value in changes.items():
        if path == "/v1/responses" and name == "max_new_tokens":
            name = "max_output_tokens"
        elif path.startswith("/v1/") and name == "max_new_tokens":
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
    shaped("n_past_request_share", "/v1/completions", {"prompt": "1", "n": MAX_CHOICES + 1}),
    shaped(
        "logprobs_past_max_scored_logprobs",
        "/v1/completions",
        {"prompt": "1" * 300, "n": MAX_CHOICES, "max_tokens": 8, "logprobs": 5, "echo": True},
    ),
    shaped("responses_top_logprobs", "/v1/responses", {"input": "1", "top_logprobs": 3}),
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
