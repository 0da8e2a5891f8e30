"""FastAPI dependencies: the generation service once the model is loaded, how to stream, the API key."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Depends, Request

from server.api.errors import ApiError
from server.api.key_gate import key_matches, unauthorized
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
        send_timeout=settings.sse_send_timeout or None,
    )


Streaming = Annotated[SSEOptions, Depends(get_stream_options)]


def require_api_key(request: Request) -> None:
    """The key check as a dependency, for routes mounted outside the app's `ApiKeyGate`
    (which already refuses, before the body is read, every request to a protected path)."""
    expected = request.app.state.settings.api_key
    if expected is not None and not key_matches(request.headers, expected.get_secret_value()):
        raise unauthorized()
