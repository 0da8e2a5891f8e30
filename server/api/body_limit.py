"""Request bodies over `max_request_bytes` are refused (413) before any of them is parsed.

A declared `Content-Length` over the limit is refused at once; a chunked body is read up to the
limit and refused as soon as it passes it, so no route ever holds a body larger than the limit.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import ApiError, error_response


class BodyLimit:
    """ASGI middleware: at most `limit` bytes of body per request."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared > self.limit:
                await self._refuse(scope, receive, send, declared)
                return
            await self.app(scope, receive, send)
            return
        body, complete = await _read_up_to(receive, self.limit)
        if not complete:
            await self._refuse(scope, receive, send, None)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: int | None) -> None:
        got = f"{size} bytes" if size is not None else "more"
        message = (
            f"body: request body is {got}; the limit is {self.limit} bytes (max_request_bytes)"
        )
        error = ApiError(413, message, "validation", "body")
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
