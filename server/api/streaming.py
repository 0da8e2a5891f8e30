"""Running a stream to the client: SSE through `sse-starlette`, pings, shutdown, disconnects.

Frames are written by `sse_starlette.EventSourceResponse`, which also sends a keep-alive comment
(`: ping`) every `sse_ping_interval` seconds, so a stream that is quiet while it waits in the
queue, prefills, or holds back deletable tokens never trips a proxy's or client's read timeout.

Disconnect: the response's task group watches for `http.disconnect` and cancels the frame
iterator; its `finally` cancels the request, which the worker sees at its next step and frees
the cache. A client that leaves before the first frame (while the headers are being sent) ends
the response before the iterator ever starts, so `CancellingResponse` also cancels the request
whenever the response ends, however it ends.

Shutdown (SIGTERM): sse-starlette sets the response's `shutdown_event` and keeps the stream open
for `shutdown_grace` seconds. The event tells the engine to drain (`on_shutdown`: refuse new
requests, end those still running at the deadline with `finish_reason` "shutdown"), so every
stream ends with its `done` event inside the grace period rather than being cut.

Slow reader: a frame the client has not taken within `sse_send_timeout` seconds ends the response
(sse-starlette's `send_timeout`), which cancels the generation as a disconnect does; the kernel's
socket buffers fill first, so a client that merely reads slowly is not cut.

Non-streaming: the generation races a task that waits for `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from backtrack.events import DoneEvent
from server.api.errors import ApiError
from server.bridge import CancellableStream

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache"}
T = TypeVar("T")
S = TypeVar("S", bound=CancellableStream[Any])


@dataclass(frozen=True)
class SSEOptions:
    """How this server streams (from the settings)."""

    ping_interval: float = 15.0
    """Seconds between keep-alive comments; 0 sends none."""
    shutdown_grace: float = 10.0
    """Seconds a stream stays open after SIGTERM: longer than the engine's drain."""
    on_shutdown: Callable[[], None] | None = None
    """Called once SIGTERM is seen (drains the engine; idempotent)."""
    send_timeout: float | None = None
    """Seconds one frame may wait for a client that does not read; then the stream ends."""


def sse_event(name: str, data: dict[str, Any]) -> ServerSentEvent:
    """A named event, so a browser's EventSource can addEventListener(name)."""
    return ServerSentEvent(json.dumps(data, ensure_ascii=False), event=name, sep="\n")


def sse_data(data: dict[str, Any] | str) -> ServerSentEvent:
    """A plain `data:` line, as TGI and OpenAI streams send."""
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return ServerSentEvent(body, sep="\n")


def sse_response(
    stream: S,
    render: Callable[[S], AsyncIterator[ServerSentEvent]],
    options: SSEOptions | None = None,
) -> EventSourceResponse:
    """Stream `render(stream)`'s frames; a client that leaves cancels the generation."""
    options = options or SSEOptions()
    shutdown = anyio.Event()

    async def drain_on_shutdown() -> None:
        await shutdown.wait()
        if options.on_shutdown is not None:
            options.on_shutdown()

    async def frames() -> AsyncIterator[ServerSentEvent]:
        watcher = asyncio.ensure_future(drain_on_shutdown())
        try:
            async for frame in render(stream):
                yield frame
        finally:
            watcher.cancel()
            if stream.done is None:
                stream.cancel()

    return CancellingResponse(
        stream,
        frames(),
        headers=SSE_HEADERS,
        ping=options.ping_interval,
        sep="\n",
        shutdown_event=shutdown,
        shutdown_grace_period=options.shutdown_grace,
        send_timeout=options.send_timeout,
    )


class CancellingResponse(EventSourceResponse):
    """An event-stream response that cancels its generation when it ends without `done`."""

    def __init__(self, stream: CancellableStream[Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:  # an OSError, so caught first: the client stopped reading
            log.warning("closing a stream whose client took no frame for %s s", self.send_timeout)
        except OSError as error:  # ASGI 2.4: a vanished client fails `send`, as Starlette says
            raise ClientDisconnect() from error
        finally:
            if self.stream.done is None:
                self.stream.cancel()


async def collect(stream: CancellableStream[T], request: Request) -> tuple[list[T], DoneEvent]:
    """Every item of a non-streaming request (one stream's events, or every choice's) and the
    final `done`; cancels the generation if the client disconnects first (499)."""
    items: list[T] = []

    async def gather() -> None:
        async for item in stream:
            items.append(item)

    await unless_disconnected(request, gather(), stream.cancel)
    if stream.done is None:
        raise ApiError(499, "client disconnected", "cancelled")
    return items, stream.done


async def unless_disconnected(
    request: Request, work: Coroutine[Any, Any, None], cancel: Callable[[], None]
) -> None:
    """Run `work` to its end, unless the client disconnects first: then `cancel()` the
    generation behind it (freeing its slot and KV at once) and stop waiting."""
    generation = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({generation, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not generation.done():
            cancel()
            generation.cancel()


async def wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
