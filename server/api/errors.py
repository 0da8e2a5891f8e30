"""Error bodies and their handlers: every refusal is JSON naming what was wrong, never a 500
for bad input.

TGI-style routes answer `TgiError` (`{"error": str, "error_type": str}`, plus `field` for
validation); `/v1/*` routes answer `OpenAIError` (`{"error": {"message", "type", "param",
"code"}}`). The same models document the refusals in the OpenAPI schema (`error_responses`).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from backtrack.params import GenerationParams, InvalidParameter, rule_text
from backtrack.validation import Problem, problems
from server.api.openai_protocol import StreamOptionsWithoutStream
from server.bridge import QueueFull, ShuttingDown


class TgiError(BaseModel):
    """A refusal on the TGI routes (TGI's shape, plus the field for a validation error)."""

    error: str
    error_type: str
    field: str | None = None


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | None = None


class OpenAIError(BaseModel):
    """A refusal on the /v1 routes (OpenAI's shape)."""

    error: OpenAIErrorBody


REFUSALS = {
    400: "the body is not JSON, or stream_options without stream",
    401: "missing or wrong API key",
    404: "an unknown model",
    413: "the body is larger than max_request_bytes",
    422: "a field out of its range, of the wrong type, or unknown; names the field",
    429: "every slot and queue place taken (Retry-After)",
    499: "the client disconnected before the answer",
    500: "generation failed",
    503: "loading or shutting down (Retry-After)",
}


def error_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The refusals a generation route can answer, documented with their body."""
    return {code: {"model": model, "description": text} for code, text in REFUSALS.items()}


class ApiError(Exception):
    """A refusal with its status, type and (for validation) the offending field."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type
        self.field, self.headers = field, headers

    def tgi_body(self) -> TgiError:
        return TgiError(error=self.message, error_type=self.error_type, field=self.field)

    def openai_body(self) -> OpenAIError:
        body = OpenAIErrorBody(
            message=self.message, type=self.error_type, param=self.field, code=self.status
        )
        return OpenAIError(error=body)


def error_response(request: Request, error: ApiError) -> JSONResponse:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None and request.method == "POST":
        metrics.rejected_requests.labels(endpoint_label(request), error.error_type).inc()
    body = error.openai_body() if request.url.path.startswith("/v1/") else error.tgi_body()
    content = body.model_dump(exclude_none=isinstance(body, TgiError))
    return JSONResponse(content, status_code=error.status, headers=error.headers)


def endpoint_label(request: Request) -> str:
    """The matched route's template, never the raw path: anyone can POST to made-up paths,
    and one label value per path would grow /metrics and memory without bound. A request refused
    before routing (the key gate, the body limits) has no matched route: its path is its label
    if a route has that path."""
    path = getattr(request.scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    known = {getattr(route, "path", None) for route in request.app.routes}
    known.update(request.app.openapi().get("paths", {}))  # routes of included routers too
    return request.url.path if request.url.path in known else "unmatched"


_UNION_TAG = re.compile(
    r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|function-.*|constrained-.*)$"
)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (`Allow` of a 405)."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _not_a_field(part: str | int) -> bool:
    """`body`, and pydantic's union member tags (`prompt.str`, `prompt.list[int].0`)."""
    return part == "body" or (isinstance(part, str) and bool(_UNION_TAG.match(part)))


def field_name(location: tuple[str | int, ...]) -> str:
    """`("body", "parameters", "top_k")` -> `parameters.top_k`."""
    return Problem(location, "", "").field(skip=_not_a_field, empty="body")


BOUNDS = ("ge", "gt", "le", "lt")
WIDER_ON_THE_WIRE = frozenset({"seed"})
"""Fields the request models bound differently from the vocabulary (a seed of any size is taken
modulo 2**64), so the vocabulary's wording of the range would be wrong."""


def _number(value: object) -> object:
    return float(value) if isinstance(value, int | float) else value


RANGE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "string_too_short"}
)
"""Pydantic's range errors: for a vocabulary field, worded by the vocabulary (its rule)."""


def _vocabulary_field(location: tuple[str | int, ...]) -> tuple[str, FieldInfo] | None:
    """(`parameters.stop`, its FieldInfo) when the location is inside a vocabulary field."""
    parts = field_name(location).split(".")
    for number, part in enumerate(parts):
        if part in GenerationParams.model_fields:
            return ".".join(parts[: number + 1]), GenerationParams.model_fields[part]
    return None


def validation_error(error: RequestValidationError) -> ApiError:
    first = problems(error.errors())[0]
    name = first.field(skip=_not_a_field, empty="body")
    cause = first.context.get("error")
    if isinstance(cause, StreamOptionsWithoutStream):
        return ApiError(400, f"stream_options: {cause}", "invalid_request_error", "stream_options")
    vocabulary = _vocabulary_field(first.location)
    if vocabulary is not None and first.kind in RANGE_ERRORS:
        prefix, info = vocabulary
        rule = rule_text(info)
        limits = {_number(value) for value in first.context.values()}
        bounds = {_number(getattr(item, key, None)) for item in info.metadata for key in BOUNDS}
        worded = first.kind == "string_too_short" or limits <= bounds
        worded = worded and prefix.rsplit(".", 1)[-1] not in WIDER_ON_THE_WIRE
        if rule and worded:  # the vocabulary's own range (not a narrower one)
            return ApiError(422, f"{prefix} {rule}", "validation", prefix)
    if first.kind == "json_invalid":
        return ApiError(422, f"body: invalid JSON ({first.message})", "validation", "body")
    return ApiError(422, f"{name}: {first.message}", "validation", name)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error_response(request, error)

    async def on_validation(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return error_response(request, validation_error(error))

    async def on_invalid_parameter(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, InvalidParameter)
        return error_response(request, ApiError(422, str(error), "validation", error.field))

    async def on_queue_full(request: Request, error: Exception) -> JSONResponse:
        message = f"server overloaded: {error}; retry later"
        return error_response(
            request, ApiError(429, message, "overloaded", headers={"Retry-After": "1"})
        )

    async def on_shutting_down(request: Request, error: Exception) -> JSONResponse:
        return error_response(
            request, ApiError(503, str(error), "unavailable", headers={"Retry-After": "5"})
        )

    async def on_http(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        headers = dict(error.headers) if error.headers is not None else None
        if error.status_code == 405:  # Starlette names the first route's methods only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return error_response(
            request, ApiError(error.status_code, str(error.detail), "http", headers=headers)
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(InvalidParameter, on_invalid_parameter)
    app.add_exception_handler(QueueFull, on_queue_full)
    app.add_exception_handler(ShuttingDown, on_shutting_down)
    app.add_exception_handler(StarletteHTTPException, on_http)
