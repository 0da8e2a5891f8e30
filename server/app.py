"""The FastAPI application: routes, error handlers, and the model loaded in the background.

`/health` answers 503 until the checkpoint is loaded and the engine runs, then 200, and 503 again
when the engine worker stops or is stuck in one step (an orchestrator then restarts the
replica). A checkpoint that cannot be served calls `on_fatal` with a clear message (the CLI then
exits non-zero). SIGTERM while the checkpoint loads exits at once: uvicorn re-raises the signal
once it has shut down, so the process never waits for the loading thread (tested).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

import server
from backtrack.checkpoint import CheckpointError
from server.api import admin, native, openai
from server.api.body_limit import BodyLimit
from server.api.errors import install_error_handlers
from server.api.key_gate import ApiKeyGate
from server.api.openapi_schema import LimitedSchemaApp
from server.engine import Engine
from server.event_log import open_event_log
from server.limits import Limits
from server.loading import load_served_model
from server.metrics import Metrics
from server.service import GenerationService
from server.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    app = LimitedSchemaApp(
        title="backtrack-serving",
        version=server.__version__,
        description="Generation with <|BACKTRACK|>: tokens and deletions streamed over SSE.",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics(settings.served_model_id)
    app.state.service = None
    app.state.engine = None
    app.state.event_log = None
    app.state.on_fatal = on_fatal or (lambda message: log.error(message))
    if settings.exposed_without_key:
        log.warning(
            "listening on %s without an API key: anyone who reaches this port can generate; "
            "set BACKTRACK_API_KEY or listen on 127.0.0.1",
            settings.host,
        )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes, timeout=settings.body_timeout)
    app.add_middleware(ApiKeyGate, settings=settings)  # outside BodyLimit: no body before the key
    for module in (admin, native, openai):
        app.include_router(module.router)
    if admin.STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=admin.STATIC_DIR), name="static")
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    loading = asyncio.create_task(_load(app))
    try:
        yield
    finally:
        loading.cancel()
        if app.state.service is not None:
            app.state.service.close()
        if app.state.engine is not None:
            await asyncio.to_thread(app.state.engine.stop)
        if app.state.event_log is not None:  # after the engine: its last requests are logged
            await asyncio.to_thread(app.state.event_log.close)


async def _load(app: FastAPI) -> None:
    """Load the checkpoint off the event loop, so /health can answer 503 meanwhile."""
    settings: Settings = app.state.settings
    log.info("loading checkpoint %s", settings.checkpoint)
    try:
        served = await asyncio.to_thread(load_served_model, settings)
    except (CheckpointError, ValueError, OSError) as error:
        app.state.on_fatal(f"cannot serve the checkpoint: {error}")
        return
    except Exception as error:
        log.exception("loading the checkpoint failed")
        app.state.on_fatal(f"cannot serve the checkpoint: {error}")
        return
    try:
        app.state.event_log = open_event_log(settings, served.tokenizer)
    except OSError as error:
        app.state.on_fatal(f"cannot open event_log {settings.event_log}: {error}")
        return
    engine = Engine(
        served,
        app.state.metrics,
        max_running=settings.max_concurrent_requests,
        max_waiting=settings.max_queue_size,
        max_batch_total_tokens=settings.max_batch_total_tokens,
        max_batch_prefill_tokens=settings.max_batch_prefill_tokens,
        stall_timeout=settings.health_stall_timeout,
        max_faults_in_a_row=settings.max_consecutive_faults,
        on_fatal=app.state.on_fatal,
        on_done=app.state.event_log.capture if app.state.event_log else None,
    )
    served.compile_step = await asyncio.to_thread(engine.warm_up)  # /info says what runs
    engine.start()
    limits = Limits.from_settings(settings)
    app.state.engine = engine
    app.state.service = GenerationService(served, engine, limits, settings.request_timeout)
    log.info("serving %s (%s, %s)", served.model_id, served.device, served.dtype)
