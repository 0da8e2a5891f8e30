"""SSE responses cancel their generation however they end, at the ASGI level (no model).

A client that leaves while the response headers are being sent ends the response before its
frame iterator ever starts; the iterator's own `finally` then never runs, so only the response
itself can cancel the job (else it would hold a slot until max_new_tokens or the timeout).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from sse_starlette import ServerSentEvent
from starlette.requests import ClientDisconnect

from backtrack.events import TokenEvent
from server.api.streaming import SSEOptions, sse_response
from server.engine import Stream


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def render(stream: Stream) -> AsyncIterator[ServerSentEvent]:
    async for event in stream:
        yield ServerSentEvent(event.kind)


def scope(spec_version: str) -> dict:
    return {"type": "http", "asgi": {"spec_version": spec_version}, "method": "POST"}


async def gone() -> dict:
    return {"type": "http.disconnect"}


@pytest.mark.anyio
async def test_leaving_while_headers_are_sent_cancels_the_job():
    """ASGI 2.3 (uvicorn): the disconnect listener wins before the first frame."""
    stream = Stream(asyncio.get_running_loop(), threading.Condition())
    started: list[dict] = []

    async def slow_send(message: dict) -> None:
        started.append(message)
        await asyncio.sleep(0.05)  # the headers are still on their way

    await sse_response(stream, render)(scope("2.3"), gone, slow_send)
    assert started and started[0]["type"] == "http.response.start"
    assert stream.cancel_requested


@pytest.mark.anyio
async def test_a_send_that_fails_on_the_headers_cancels_the_job():
    """ASGI 2.4: the server reports the vanished client by failing `send`."""
    stream = Stream(asyncio.get_running_loop(), threading.Condition())

    async def broken_send(message: dict) -> None:
        raise OSError("connection reset")

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    with pytest.raises(ClientDisconnect):
        await sse_response(stream, render)(scope("2.4"), receive, broken_send)
    assert stream.cancel_requested


@pytest.mark.anyio
async def test_a_silent_stream_gets_keep_alive_pings():
    """No event for 0.5 s with a 0.1 s ping interval: comments keep the connection busy."""
    stream = Stream(asyncio.get_running_loop(), threading.Condition())
    sent: list[bytes] = []

    async def send(message: dict) -> None:
        sent.append(message.get("body", b""))

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def quiet(stream: Stream) -> AsyncIterator[ServerSentEvent]:
        await asyncio.sleep(0.5)
        yield ServerSentEvent("{}", event="done", sep="\n")

    options = SSEOptions(ping_interval=0.1)
    await sse_response(stream, quiet, options)(scope("2.3"), receive, send)
    body = b"".join(sent).decode()
    assert body.count(": ping") >= 3
    assert body.endswith("event: done\ndata: {}\n\n")


@pytest.mark.anyio
async def test_on_shutdown_the_engine_drains_and_the_stream_still_ends_with_done(monkeypatch):
    """sse-starlette sees the server exiting: the response's shutdown event drains the engine
    (which then ends the request) and its grace period lets the `done` event through."""
    from sse_starlette.sse import AppStatus

    stream = Stream(asyncio.get_running_loop(), threading.Condition())
    drained = asyncio.Event()
    sent: list[bytes] = []

    async def send(message: dict) -> None:
        sent.append(message.get("body", b""))

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def until_drained(stream: Stream) -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent("{}", event="token", sep="\n")
        await drained.wait()  # the engine ends running requests once told to drain
        yield ServerSentEvent('{"finish_reason": "shutdown"}', event="done", sep="\n")

    monkeypatch.setattr(AppStatus, "should_exit", True)
    options = SSEOptions(ping_interval=0, shutdown_grace=5, on_shutdown=drained.set)
    await asyncio.wait_for(
        sse_response(stream, until_drained, options)(scope("2.3"), receive, send), timeout=10
    )
    assert drained.is_set()
    assert b"".join(sent).decode().endswith('event: done\ndata: {"finish_reason": "shutdown"}\n\n')


@pytest.mark.anyio
async def test_a_client_that_stops_reading_is_cut_after_send_timeout_and_its_job_cancelled():
    """A reader that takes the headers and then no frame: the stream ends after `send_timeout`
    instead of holding its slot until the generation ends (here: never)."""
    stream = Stream(asyncio.get_running_loop(), threading.Condition())
    stream.publish([TokenEvent(index=0, id=1, text="z", logprob=0.0)])
    sent: list[dict] = []

    async def stalled_send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the client's window is full and stays full

    async def never_leaves() -> dict:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    response = sse_response(stream, render, SSEOptions(ping_interval=0, send_timeout=0.2))
    await asyncio.wait_for(response(scope("2.3"), never_leaves, stalled_send), timeout=15)
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert stream.cancel_requested
