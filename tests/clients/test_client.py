"""The clients over real HTTP against scripted replies: retries, errors, timeouts, keys.

What the real server cannot be told to do on demand is scripted here; the same client against
the real server is in `test_live.py`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from backtrack.events import event_payload
from clients import (
    APITimeoutError,
    AsyncBacktrackClient,
    AuthenticationError,
    BacktrackClient,
    OverloadedError,
    ProtocolError,
    RetryPolicy,
    StreamError,
    ValidationError,
)
from tests.clients.scripted_server import (
    Reply,
    ScriptedServer,
    json_reply,
    scripted_server,
    sse_reply,
)

FAST_RETRY = RetryPolicy(max_retries=2, max_wait=1.0)


@contextmanager
def client_for(*replies: Reply, **options) -> Iterator[tuple[BacktrackClient, ScriptedServer]]:
    """A sync client talking to a server that answers `replies` in order."""
    with scripted_server(*replies) as (url, script), BacktrackClient(url, **options) as client:
        yield client, script


def recorded_reply(events, pause: float = 0.0) -> Reply:
    return sse_reply(*[(event.kind, event_payload(event)) for event in events], pause=pause)


def overloaded(retry_after: str = "0.2") -> Reply:
    return json_reply(
        429, {"error": "queue full", "error_type": "overloaded"}, **{"retry-after": retry_after}
    )


def test_stream_yields_typed_events_and_the_visible_text(recorded_events):
    with client_for(recorded_reply(recorded_events)) as (client, script):
        updates = list(client.stream("123+456=", max_new_tokens=12, seed=3))
    assert [update.event.kind for update in updates] == [e.kind for e in recorded_events]
    assert updates[-1].text == recorded_events[-1].generated_text
    sent = script.received[0]
    assert sent.path == "/generate"
    assert sent.body == {
        "inputs": "123+456=",
        "parameters": {"max_new_tokens": 12, "seed": 3},
        "stream": True,
    }


def test_429_is_retried_after_the_servers_delay(recorded_events):
    replies = [overloaded("0.2"), overloaded("0.2"), recorded_reply(recorded_events)]
    with client_for(*replies, retry=FAST_RETRY) as (client, script):
        updates = list(client.stream("123+456="))
    assert updates[-1].event.kind == "done"
    times = [received.at for received in script.received]
    assert len(times) == 3
    assert all(later - earlier >= 0.19 for earlier, later in itertools.pairwise(times))


def test_429_beyond_the_retry_limit_raises_with_the_servers_message():
    with (
        client_for(*[overloaded("0.05")] * 3, retry=FAST_RETRY) as (client, script),
        pytest.raises(OverloadedError) as caught,
    ):
        client.generate("123+456=")
    assert len(script.received) == 3
    assert (caught.value.status, caught.value.message, caught.value.retry_after) == (
        429,
        "queue full",
        0.05,
    )


def test_validation_errors_are_not_retried_and_name_the_field():
    reply = json_reply(
        422, {"error": "temperature must be strictly positive", "error_type": "validation"}
    )
    with (
        client_for(reply, retry=FAST_RETRY) as (client, script),
        pytest.raises(ValidationError, match="temperature") as caught,
    ):
        list(client.stream("123+456=", temperature=0))
    assert caught.value.status == 422
    assert len(script.received) == 1


def test_api_key_is_sent_as_a_bearer_token_and_401_raises():
    reply = json_reply(401, {"error": "invalid API key", "error_type": "authentication"})
    with (
        client_for(reply, api_key="s3cret") as (client, script),
        pytest.raises(AuthenticationError),
    ):
        client.generate("123+456=")
    assert script.received[0].headers["authorization"] == "Bearer s3cret"


def test_generate_returns_text_and_details_and_asks_for_details():
    details = {"finish_reason": "eos_token", "generated_tokens": 3, "backtracks": 2, "new": 1}
    reply = json_reply(200, {"generated_text": "579", "details": details})
    with client_for(reply) as (client, script):
        result = client.generate("123+456=", max_new_tokens=4)
    assert result.generated_text == "579"
    assert (result.details.finish_reason, result.details.backtracks) == ("eos_token", 2)
    assert script.received[0].body["parameters"] == {"max_new_tokens": 4, "details": True}
    assert script.received[0].body["stream"] is False


def test_a_stalled_stream_times_out(recorded_events):
    with scripted_server(recorded_reply(recorded_events[:3], pause=5.0)) as (url, _):
        started = time.monotonic()
        with BacktrackClient(url, timeout=0.3) as client, pytest.raises(APITimeoutError):
            list(client.stream("123+456="))
    assert time.monotonic() - started < 3


def test_an_error_event_mid_stream_raises_after_the_tokens_before_it(recorded_events):
    token = recorded_events[0]
    reply = sse_reply(
        (token.kind, event_payload(token)),
        ("error", {"error": "generation failed", "error_type": "generation"}),
    )
    received = []
    with (
        client_for(reply) as (client, _),
        pytest.raises(StreamError, match="generation failed"),
    ):
        for update in client.stream("123+456="):
            received.append(update)
    assert [update.event.kind for update in received] == ["token"]


def test_a_stream_cut_before_done_is_a_protocol_error(recorded_events):
    with (
        client_for(recorded_reply(recorded_events[:-1])) as (client, _),
        pytest.raises(ProtocolError, match="done"),
    ):
        list(client.stream("123+456="))


def test_a_non_stream_answer_to_a_stream_request_is_a_protocol_error():
    with (
        client_for(json_reply(200, {"generated_text": "x"})) as (client, _),
        pytest.raises(ProtocolError, match="event stream"),
    ):
        list(client.stream("123+456="))


def test_async_client_streams_retries_and_generates(recorded_events):
    replies = [
        overloaded("0.1"),
        recorded_reply(recorded_events),
        json_reply(200, {"generated_text": "579", "details": None}),
    ]

    async def run():
        async with AsyncBacktrackClient(url, retry=FAST_RETRY) as client:
            updates = [update async for update in client.stream("123+456=")]
            result = await client.generate("123+456=")
        return updates, result

    with scripted_server(*replies) as (url, script):
        updates, result = asyncio.run(run())
    assert updates[-1].text == recorded_events[-1].generated_text
    assert result.generated_text == "579"
    assert len(script.received) == 3


def test_async_client_raises_server_errors():
    reply = json_reply(422, {"error": "top_p must be in (0, 1]", "error_type": "validation"})

    async def run():
        async with AsyncBacktrackClient(url) as client:
            await client.generate("x", top_p=2.0)

    with scripted_server(reply) as (url, _), pytest.raises(ValidationError, match="top_p"):
        asyncio.run(run())
