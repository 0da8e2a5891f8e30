"""Exceptions the client raises: every server error keeps the server's message and status.

The server answers errors as `{"error": str, "error_type": str}`; `error_from_response` turns
such an answer (or anything else a proxy might send) into the matching exception class, so
callers can `except OverloadedError` or `except ValidationError` without reading status codes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class BacktrackClientError(Exception):
    """Base class of everything the client raises."""


class APIConnectionError(BacktrackClientError):
    """The server could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """No answer (or no next chunk of the stream) within the configured timeout."""


class ProtocolError(BacktrackClientError):
    """The server sent something the protocol does not allow (e.g. a stream with no `done`)."""


class APIError(BacktrackClientError):
    """The server answered with an error.

    `status` is the HTTP status (for an error sent mid-stream, the status the stream began
    with), `message` and `error_type` are the server's own words, `retry_after` the seconds of
    its `Retry-After` header, when it sent one; `field` the rejected parameter, for validation.
    """

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str | None = None,
        retry_after: float | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(f"{status} {error_type or 'error'}: {message}")
        self.status = status
        self.message = message
        self.error_type = error_type
        self.retry_after = retry_after
        self.field = field


class ValidationError(APIError):
    """422: a parameter was rejected; the message names the field."""


class AuthenticationError(APIError):
    """401: a missing or wrong API key."""


class OverloadedError(APIError):
    """429: the server is full; retried after `retry_after` seconds up to the client's limit."""


class UnavailableError(APIError):
    """503: the server is not ready or shutting down."""


class StreamError(APIError):
    """An `error` event arrived in the middle of a stream."""


_BY_STATUS: dict[int, type[APIError]] = {
    401: AuthenticationError,
    422: ValidationError,
    429: OverloadedError,
    503: UnavailableError,
}


@dataclass(frozen=True)
class ErrorBody:
    message: str
    error_type: str | None = None
    field: str | None = None


def parse_error_body(body: bytes) -> ErrorBody:
    """The server's message, error type and field from an error body, whatever its shape."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return ErrorBody(body.decode("utf-8", errors="replace").strip() or "no message")
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):  # OpenAI's shape: {"error": {"message", "type", "param"}}
            return ErrorBody(
                str(error.get("message", error)), error.get("type"), error.get("param")
            )
        if error is not None:
            return ErrorBody(str(error), payload.get("error_type"), payload.get("field"))
        if "detail" in payload:  # a framework's default error body
            return ErrorBody(json.dumps(payload["detail"]))
    return ErrorBody(json.dumps(payload))


def error_from_response(status: int, body: bytes, retry_after: float | None) -> APIError:
    error = parse_error_body(body)
    error_class = _BY_STATUS.get(status, APIError)
    return error_class(status, error.message, error.error_type, retry_after, error.field)


def stream_error(status: int, data: str) -> StreamError:
    """An `event: error` payload turned into an exception."""
    error = parse_error_body(data.encode())
    return StreamError(status, error.message, error.error_type, field=error.field)
