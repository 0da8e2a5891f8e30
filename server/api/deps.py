"""FastAPI dependencies: the generation service once the model is loaded, how to stream, the API key."""

from __future__ import annotations

import hmac
from functools import partial
from typing import Annotated

from fastapi import Depends, Request

from server.api.errors import ApiError
from server.api.streaming import SSEOptions
from server.service import GenerationService


def get_service(request: Request) -> GenerationService:
    service = request.app.state.service
    if service is None:
        raise ApiError(
            503, "the model is still loading", "unavailable", headers={"Retry-After": "2"}
        )
    return service


Service = Annotated[GenerationService, Depends(get_service)]

SHUTDOWN_MARGIN = 3.0
"""Seconds a stream stays open past the drain deadline, for its `done` event to be written
(uvicorn's own graceful-shutdown timeout is longer still: `server.__main__`)."""


def get_stream_options(request: Request) -> SSEOptions:
    settings, engine = request.app.state.settings, request.app.state.engine
    drain = partial(engine.begin_shutdown, settings.shutdown_timeout) if engine else None
    return SSEOptions(
        ping_interval=settings.sse_ping_interval,
        shutdown_grace=settings.shutdown_timeout + SHUTDOWN_MARGIN,
        on_shutdown=drain,
    )


Streaming = Annotated[SSEOptions, Depends(get_stream_options)]


def require_api_key(request: Request) -> None:
    """With an API key configured, generation needs `Authorization: Bearer <key>` (or x-api-key)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    given = given or request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
        raise ApiError(
            401,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            "unauthorized",
            headers={"WWW-Authenticate": "Bearer"},
        )
