"""The API key, checked on the request head before any body is read.

Route-agnostic: every path needs the key except those listed open here, so a route added later
is protected without naming it. `/health` is always open (orchestrators' probes carry no key),
and so are the web page (`/`, `/static/...`: it sends the key the user types with each call);
`/metrics`, `/info` and the API docs are open unless `protect_metrics` is set. A request refused
here is a 401 whose body was never read, so an unauthenticated client cannot make the server
buffer or parse anything; the refusal closes the connection, so the unread body is not waited
for either. CORS preflights are answered by the CORS middleware, outside this one.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import ApiError, error_response
from server.settings import Settings

ALWAYS_OPEN = frozenset({"/health", "/"})
OPEN_PREFIXES = ("/static/",)
SERVICE_PAGES = frozenset({"/metrics", "/info", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
"""Open by default (monitoring and discovery); behind the key with `protect_metrics`."""


def key_matches(headers: Headers, expected: str) -> bool:
    """`Authorization: Bearer <key>` or `x-api-key: <key>`, compared in constant time."""
    header = headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    given = given or headers.get("x-api-key", "")
    return hmac.compare_digest(given.encode(), expected.encode())


def needs_key(path: str, protect_metrics: bool) -> bool:
    if path in ALWAYS_OPEN or path.startswith(OPEN_PREFIXES):
        return False
    return protect_metrics or path not in SERVICE_PAGES


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "missing or wrong API key: send 'Authorization: Bearer <key>'",
        "unauthorized",
        headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
    )


class ApiKeyGate:
    """ASGI middleware: 401 for a request without the key to a protected path, before its body."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.key = settings.api_key.get_secret_value() if settings.api_key else None
        self.protect_metrics = settings.protect_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.key is not None
            and needs_key(scope["path"], self.protect_metrics)
            and not key_matches(Headers(scope=scope), self.key)
        ):
            await error_response(Request(scope, receive), unauthorized())(scope, receive, send)
            return
        await self.app(scope, receive, send)
