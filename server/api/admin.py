"""`GET /health`, `/info`, `/metrics`, and the web page at `/` when it is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response

import server
from backtrack.params import MODES, POLICIES, describe
from server.api.deps import Service
from server.limits import Limits

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
INDEX_PAGE = STATIC_DIR / "index.html"

router = APIRouter(tags=["service"])


@router.get(
    "/health", summary="200 once the model can serve; 503 while it loads or if the worker failed"
)
async def health(request: Request) -> JSONResponse:
    if request.app.state.service is None:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "2"})
    problem = request.app.state.engine.problem()
    if problem is not None:  # dead or wedged worker: the orchestrator should restart us
        return JSONResponse({"status": "unhealthy", "error": problem}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/info", summary="Model, backtrack token, limits and version")
async def info(request: Request, service: Service) -> dict[str, Any]:
    settings = request.app.state.settings
    served, limits = service.served, service.limits
    return {
        "model_id": served.model_id,
        "model_dtype": str(served.dtype).removeprefix("torch."),
        "model_device_type": served.device.type,
        "kv_layout": served.kv_layout,
        "compiled_step": served.compile_step,
        "threads": served.threads,
        "threads_follow_free_cores": served.core_share is not None,
        "backtrack_token": served.backtrack_token,
        "backtrack_token_id": served.backtrack_id,
        "objective": served.metadata.objective,
        "task": served.metadata.task,
        **limits.published(),
        "max_context": served.max_context,
        "max_request_bytes": settings.max_request_bytes,
        "max_concurrent_requests": settings.max_concurrent_requests,
        "max_queue_size": settings.max_queue_size,
        "max_request_share": settings.max_request_share,
        "special_tokens_in_prompts": settings.special_tokens_in_prompts,
        "max_batch_total_tokens": settings.max_batch_total_tokens,
        "max_batch_prefill_tokens": settings.max_batch_prefill_tokens,
        "request_timeout": settings.request_timeout,
        "health_stall_timeout": settings.health_stall_timeout,
        "max_consecutive_faults": settings.max_consecutive_faults,
        "max_header_bytes": settings.max_header_bytes,
        "header_timeout": settings.header_timeout,
        "body_timeout": settings.body_timeout,
        "max_connections": settings.max_connections,
        "sse_send_timeout": settings.sse_send_timeout,
        "protect_metrics": settings.protect_metrics,
        "event_log": settings.event_log is not None,
        "event_log_prompts": settings.event_log is not None and settings.event_log_prompts,
        "modes": list(MODES),
        "backtrack_policies": list(POLICIES),
        "parameters": parameters(limits),
        "version": server.__version__,
        "router": "backtrack-serving",
    }


def parameters(limits: Limits) -> list[dict[str, Any]]:
    """The request vocabulary (`backtrack.params.describe`) with this server's caps as maxima and
    its defaults where it changes them: the web page builds its controls from this."""
    caps = limits.parameter_maxima()
    defaults = {"max_new_tokens": limits.default_max_new_tokens}
    described = describe()
    for entry in described:
        cap = caps.get(entry["name"])
        if cap is not None:
            entry["maximum"] = cap
            entry["default"] = min(defaults.get(entry["name"], entry["default"]), cap)
    return described


@router.get("/metrics", summary="Prometheus exposition", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get(
    "/",
    summary="The web page (or a JSON pointer to the docs without it)",
    response_class=HTMLResponse,
    responses={200: {"content": {"application/json": {}}}},
)
async def index() -> Response:
    if INDEX_PAGE.is_file():
        return FileResponse(INDEX_PAGE)
    return JSONResponse({"service": "backtrack-serving", "docs": "/docs", "health": "/health"})
