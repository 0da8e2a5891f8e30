"""Request bodies: at most `max_request_bytes`, all of it within `body_timeout` seconds.

A declared `Content-Length` over the limit is refused (413) at once; any other body is read here,
up to the limit and before the route runs, then handed on. A chunked body is refused as soon as
it passes the limit, so no route ever holds a body larger than it; a body that has not fully
arrived `body_timeout` seconds after the request head is answered 408 and its connection closed,
so a slow sender cannot hold its buffer (and a connection) for ever.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import ApiError, error_response


class BodyLimit:
    """ASGI middleware: at most `limit` bytes of body per request, within `timeout` seconds."""

    def __init__(self, app: ASGIApp, limit: int, timeout: float) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send, declared)
            return
        try:
            body, complete = await asyncio.wait_for(_read_up_to(receive, self.limit), self.timeout)
        except TimeoutError:
            message = (
                f"body: the request body did not arrive within {self.timeout:g} s (body_timeout)"
            )
            error = ApiError(408, message, "timeout", "body", headers={"Connection": "close"})
            await error_response(Request(scope, receive), error)(scope, receive, send)
            return
        if not complete:
            await self._refuse(scope, receive, send, None)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int | None) -> None:
        got = f"{size} bytes" if size is not None else "more"
        message = (
            f"body: request body is {got}; the limit is {self.limit} bytes (max_request_bytes)"
        )
        error = ApiError(413, message, "validation", "body", headers={"Connection": "close"})
        await error_response(Request(scope, receive), error)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_up_to(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body if it ends within `limit` bytes (True), else what was read (False)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # disconnected: let the app see an empty body
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over the buffered body once, then the real channel (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
