"""Every way a request ends, read by the clients people point at this server, unchanged.

Each outcome (eos, a stop sequence, the length limit, the request timeout, a shutdown, a failed
generation) is produced on a real server process and parsed by TGI's
`text_generation` (sync and async, generate and stream), `huggingface_hub`'s InferenceClient, the
openai SDK (completions and chat, streamed or not) and this project's own client. Each must see a
finish reason in its own protocol's set, with ours beside it where the client keeps extra fields,
and a failed generation must raise the client's own error, never crash its parser.

The scripted checkpoint (`tests/server/conftest.py`): `1 ` answers `ok` then EOS, `zz` repeats
`z` to the limit. The server here times requests out after 1.5 s; a request with seed
`FAULT_SEED` fails after its third token (`tests/server/fault_injection`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import huggingface_hub
import openai
import pytest

from clients import BacktrackClient
from clients.errors import APIError as BacktrackAPIError
from clients.sse import iter_events
from server.api.finish_reasons import openai_finish_reason, tgi_finish_reason
from server.process import ServerHandle, running_server
from tests.server.conftest import LOOP_PROMPT, MODEL_ID
from tests.server.metrics_text import scrape, value

try:
    import text_generation
except ImportError:  # installed apart (`make install`): it pins an older huggingface_hub
    text_generation = None
TGI_CLIENT_MISSING = "TGI's client is not installed: `make install` adds text-generation"
pytestmark = pytest.mark.filterwarnings(
    "ignore:The `dict` method is deprecated:DeprecationWarning"  # text-generation's own call
)

FAULT_SEED = 424242
FAULTY_SERVER_ENV = {
    "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent / "fault_injection"), os.environ.get("PYTHONPATH", "")]
    ),
    "FAULT_SEED": str(FAULT_SEED),
}
REQUEST_TIMEOUT = 1.5
MAX_NEW_TOKENS = 4000
"""Long enough that `zz` is still running when the timeout or a shutdown ends it."""


@dataclass(frozen=True)
class Scenario:
    prompt: str
    max_new_tokens: int
    reason: str
    """Our own finish reason, as the native stream's `done` says it."""
    stop: list[str] = field(default_factory=list)
    seed: int = 1


SCENARIOS = {
    "eos": Scenario("1 ", 20, "eos"),
    "stop": Scenario("1 ", 20, "stop", stop=["k"]),
    "length": Scenario(LOOP_PROMPT, 3, "length"),
    "timeout": Scenario(LOOP_PROMPT, MAX_NEW_TOKENS, "timeout"),
}
FAILING = Scenario(LOOP_PROMPT, 20, "error", seed=FAULT_SEED)
SHUTDOWN = Scenario(LOOP_PROMPT, MAX_NEW_TOKENS, "shutdown")


@pytest.fixture(scope="module")
def ending(scripted_checkpoint_dir) -> Iterator[ServerHandle]:
    """A server where every scenario but a shutdown can happen."""
    with running_server(
        scripted_checkpoint_dir,
        env=FAULTY_SERVER_ENV,
        request_timeout=REQUEST_TIMEOUT,
        max_new_tokens=MAX_NEW_TOKENS,
        model_id=MODEL_ID,
    ) as handle:
        yield handle


# -- the clients: each returns (its finish reason, our reason where it keeps extra fields) -------

Parsed = tuple[str, str | None]


def tgi_kwargs(s: Scenario) -> dict:
    return {"max_new_tokens": s.max_new_tokens, "stop_sequences": s.stop, "seed": s.seed}


def tgi_generate(url: str, s: Scenario) -> Parsed:
    details = text_generation.Client(url, timeout=30).generate(s.prompt, **tgi_kwargs(s)).details
    return details.finish_reason.value, None  # its models drop fields they do not know


def tgi_generate_stream(url: str, s: Scenario) -> Parsed:
    client = text_generation.Client(url, timeout=30)
    last = list(client.generate_stream(s.prompt, **tgi_kwargs(s)))[-1]
    return last.details.finish_reason.value, None


def tgi_async_generate(url: str, s: Scenario) -> Parsed:
    async def run() -> Parsed:
        client = text_generation.AsyncClient(url, timeout=30)
        details = (await client.generate(s.prompt, **tgi_kwargs(s))).details
        return details.finish_reason.value, None

    return asyncio.run(run())


def tgi_async_generate_stream(url: str, s: Scenario) -> Parsed:
    async def run() -> Parsed:
        client = text_generation.AsyncClient(url, timeout=30)
        lines = [line async for line in client.generate_stream(s.prompt, **tgi_kwargs(s))]
        return lines[-1].details.finish_reason.value, None

    return asyncio.run(run())


def hf_kwargs(s: Scenario) -> dict:
    return {"max_new_tokens": s.max_new_tokens, "stop": s.stop, "seed": s.seed, "details": True}


def hf_generate(url: str, s: Scenario) -> Parsed:
    client = huggingface_hub.InferenceClient(base_url=url, timeout=30)
    details = client.text_generation(s.prompt, **hf_kwargs(s)).details
    return details.finish_reason, details.backtrack_finish_reason  # kept as an attribute


def hf_generate_stream(url: str, s: Scenario) -> Parsed:
    client = huggingface_hub.InferenceClient(base_url=url, timeout=30)
    details = list(client.text_generation(s.prompt, stream=True, **hf_kwargs(s)))[-1].details
    return details.finish_reason, details.backtrack_finish_reason


def tgi_stream_route(url: str, s: Scenario) -> Parsed:
    """`POST /generate_stream`, which TGI's clients do not call (they stream from `/`)."""
    body = {"inputs": s.prompt, "parameters": {**native_kwargs(s), "details": True}}
    with httpx.stream("POST", f"{url}/generate_stream", json=body, timeout=30) as response:
        last = list(iter_events(response.iter_bytes()))[-1].json()
    if "error" in last:
        raise text_generation.errors.parse_error(200, last)  # what TGI's clients do with it
    return last["details"]["finish_reason"], last["details"]["backtrack_finish_reason"]


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def openai_kwargs(s: Scenario) -> dict:
    return {
        "model": MODEL_ID,
        "max_tokens": s.max_new_tokens,
        "stop": s.stop,
        "seed": s.seed,
        "temperature": 0,  # OpenAI samples by default
    }


def openai_parsed(choice) -> Parsed:
    """The SDK keeps fields it does not know, as it keeps vLLM's `stop_reason`."""
    return choice.finish_reason, (choice.model_extra or {}).get("backtrack_finish_reason")


def openai_completion(url: str, s: Scenario) -> Parsed:
    completion = sdk(url).completions.create(prompt=s.prompt, **openai_kwargs(s))
    return openai_parsed(completion.choices[0])


def openai_completion_stream(url: str, s: Scenario) -> Parsed:
    chunks = list(sdk(url).completions.create(prompt=s.prompt, stream=True, **openai_kwargs(s)))
    return openai_parsed(chunks[-1].choices[0])


def chat_messages(s: Scenario) -> list[dict]:
    return [{"role": "user", "content": s.prompt}]  # the very prompt, with a plain checkpoint


def openai_chat(url: str, s: Scenario) -> Parsed:
    completion = sdk(url).chat.completions.create(messages=chat_messages(s), **openai_kwargs(s))
    return openai_parsed(completion.choices[0])


def openai_chat_stream(url: str, s: Scenario) -> Parsed:
    create = sdk(url).chat.completions.create
    chunks = list(create(messages=chat_messages(s), stream=True, **openai_kwargs(s)))
    return openai_parsed(chunks[-1].choices[0])


def native_kwargs(s: Scenario) -> dict:
    return {"max_new_tokens": s.max_new_tokens, "stop": s.stop, "seed": s.seed}


def native_generate(url: str, s: Scenario) -> Parsed:
    """`POST /generate` as JSON: TGI's body, so TGI's reasons, ours beside them."""
    with BacktrackClient(url, timeout=30) as client:
        details = client.generate(s.prompt, **native_kwargs(s)).details
    assert details is not None
    return details.finish_reason, details.backtrack_finish_reason


def native_stream(url: str, s: Scenario) -> Parsed:
    """The native stream's `done` keeps our own reason, unchanged."""
    with BacktrackClient(url, timeout=30) as client:
        updates = list(client.stream(s.prompt, **native_kwargs(s)))
    return updates[-1].event.finish_reason, None


@dataclass(frozen=True)
class Client:
    call: Callable[[str, Scenario], Parsed]
    protocol: Literal["tgi", "openai", "native"]
    error: type[Exception]
    """What it raises for a failed generation: its own error, with our message."""
    keeps_ours: bool = True
    """Whether it keeps `backtrack_finish_reason` (text_generation's models drop extra fields)."""
    uses_tgi_client: bool = False
    """Needs `text_generation` (installed apart, so its tests skip without it)."""

    @property
    def installed(self) -> bool:
        return text_generation is not None or not self.uses_tgi_client


TGI_FAILED = text_generation.errors.GenerationError if text_generation else ImportError
HF_FAILED = huggingface_hub.errors.GenerationError


def tgi_client(call: Callable[[str, Scenario], Parsed], keeps_ours: bool = False) -> Client:
    """A caller that needs `text_generation` (TGI's own client, or its error parser)."""
    return Client(call, "tgi", TGI_FAILED, keeps_ours=keeps_ours, uses_tgi_client=True)


CLIENTS = {
    "tgi-generate": tgi_client(tgi_generate),
    "tgi-generate_stream": tgi_client(tgi_generate_stream),
    "tgi-async-generate": tgi_client(tgi_async_generate),
    "tgi-async-stream": tgi_client(tgi_async_generate_stream),
    "hf-text_generation": Client(hf_generate, "tgi", HF_FAILED),
    "hf-text_generation-stream": Client(hf_generate_stream, "tgi", HF_FAILED),
    "generate_stream-route": tgi_client(tgi_stream_route, keeps_ours=True),
    "native-generate": Client(native_generate, "tgi", BacktrackAPIError),
    "openai-completion": Client(openai_completion, "openai", openai.APIError),
    "openai-completion-stream": Client(openai_completion_stream, "openai", openai.APIError),
    "openai-chat": Client(openai_chat, "openai", openai.APIError),
    "openai-chat-stream": Client(openai_chat_stream, "openai", openai.APIError),
    "native-stream": Client(native_stream, "native", BacktrackAPIError, keeps_ours=False),
}
PROTOCOL_SETS = {"tgi": {"length", "eos_token", "stop_sequence"}, "openai": {"stop", "length"}}


def check(client: Client, parsed: Parsed, reason: str) -> None:
    """The client's reason is in its protocol's set and means ours; ours is beside it."""
    finish, ours = parsed
    if client.protocol == "native":
        assert finish == reason
    else:
        assert finish in PROTOCOL_SETS[client.protocol]
        to_protocol = tgi_finish_reason if client.protocol == "tgi" else openai_finish_reason
        assert finish == to_protocol(reason)
    assert ours == (reason if client.keeps_ours else None)


def installed(name: str) -> Client:
    client = CLIENTS[name]
    if not client.installed:
        pytest.skip(TGI_CLIENT_MISSING)
    return client


@pytest.mark.parametrize("name", CLIENTS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_client_parses_how_a_request_ended(ending, scenario, name):
    s = SCENARIOS[scenario]
    client = installed(name)
    check(client, client.call(ending.url, s), s.reason)


@pytest.mark.parametrize("name", CLIENTS)
def test_a_failed_generation_raises_the_clients_own_error(ending, name):
    client = installed(name)
    with pytest.raises(client.error, match="generation failed"):
        client.call(ending.url, FAILING)
    check(client, client.call(ending.url, SCENARIOS["eos"]), "eos")  # and the server serves on


def test_a_failed_openai_stream_ends_with_an_error_chunk_then_done(ending):
    body = {"prompt": FAILING.prompt, "max_tokens": 20, "seed": FAULT_SEED, "stream": True}
    with httpx.stream("POST", f"{ending.url}/v1/completions", json=body, timeout=30) as response:
        events = [event.data for event in iter_events(response.iter_bytes())]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["type"] == "server_error"


@pytest.mark.parametrize("reason", ["timeout", "shutdown", "cancelled", "a reason added later"])
def test_a_reason_outside_a_protocols_set_reads_as_length(reason):
    assert (tgi_finish_reason(reason), openai_finish_reason(reason)) == ("length", "length")


def test_a_shutdown_ends_every_clients_request_as_length(scripted_checkpoint_dir):
    """On SIGTERM with no grace left, each running request ends with `shutdown`: every client
    reads a truncated answer (`length`), ours beside it, and none crashes."""
    clients = {name: client for name, client in CLIENTS.items() if client.installed}
    results: dict[str, Parsed | BaseException] = {}

    def run(name: str, url: str) -> None:
        try:
            results[name] = clients[name].call(url, SHUTDOWN)
        except BaseException as error:  # reported by the assertion below
            results[name] = error

    with running_server(
        scripted_checkpoint_dir,
        shutdown_timeout=0,
        max_new_tokens=MAX_NEW_TOKENS,
        model_id=MODEL_ID,
    ) as server:
        threads = [threading.Thread(target=run, args=(name, server.url)) for name in clients]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while value(scrape(server.url), "backtrack_running_requests") < len(clients):
            assert time.monotonic() < deadline, "the requests did not all start"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
    for name, client in clients.items():
        parsed = results[name]
        assert not isinstance(parsed, BaseException), f"{name}: {parsed!r}"
        check(client, parsed, "shutdown")
