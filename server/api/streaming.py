"""Running a stream to the client: SSE framing, and cancelling on disconnect.

Streaming: Starlette cancels the response's iterator when the client sends `http.disconnect`;
the `finally` below then cancels the request, which the worker sees at its next step and frees
the cache. A client that leaves before the first frame (while the headers are being sent) ends
the response before the iterator ever starts, so its `finally` never runs: `CancellingResponse`
cancels the request whenever the response ends, however it ends. Non-streaming: the generation
races a task that waits for `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from backtrack.events import DoneEvent, Event
from server.api.errors import ApiError
from server.engine import Stream

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(name: str, data: dict[str, Any]) -> str:
    """A named event, so a browser's EventSource can addEventListener(name)."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def sse_data(data: dict[str, Any] | str) -> str:
    """A plain `data:` line, as TGI and OpenAI streams send."""
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {body}\n\n"


Renderer = Callable[[Stream], AsyncIterator[str]]


def sse_response(stream: Stream, render: Renderer) -> StreamingResponse:
    """Stream `render(stream)`'s frames; a client that leaves cancels the generation."""

    async def frames() -> AsyncIterator[str]:
        try:
            async for frame in render(stream):
                yield frame
        finally:
            if stream.done is None:
                stream.cancel()

    return CancellingResponse(stream, frames(), media_type="text/event-stream", headers=SSE_HEADERS)


class CancellingResponse(StreamingResponse):
    """A streaming response that cancels its generation when it ends without `done`."""

    def __init__(self, stream: Stream, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.stream.done is None:
                self.stream.cancel()


async def collect(stream: Stream, request: Request) -> tuple[list[Event], DoneEvent]:
    """Every event of a non-streaming request; cancels it if the client disconnects first."""
    events: list[Event] = []

    async def gather() -> None:
        async for event in stream:
            events.append(event)

    generation = asyncio.ensure_future(gather())
    disconnect = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({generation, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not generation.done():
            stream.cancel()
            generation.cancel()
    if stream.done is None:
        raise ApiError(499, "client disconnected", "cancelled")
    return events, stream.done


async def wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
