"""Clients of the backtrack server's native API: Python (sync and async) and a terminal viewer.

The web page lives with the server (`server/static/index.html`) and speaks the same stream.
"""

from clients.client import (
    AsyncBacktrackClient,
    BacktrackClient,
    Details,
    Generation,
    Parameters,
)
from clients.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BacktrackClientError,
    OverloadedError,
    ProtocolError,
    StreamError,
    UnavailableError,
    ValidationError,
)
from clients.events import BacktrackEvent, DoneEvent, Event, StreamUpdate, TokenEvent
from clients.retry import RetryPolicy

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncBacktrackClient",
    "AuthenticationError",
    "BacktrackClient",
    "BacktrackClientError",
    "BacktrackEvent",
    "Details",
    "DoneEvent",
    "Event",
    "Generation",
    "OverloadedError",
    "Parameters",
    "ProtocolError",
    "RetryPolicy",
    "StreamError",
    "StreamUpdate",
    "TokenEvent",
    "UnavailableError",
    "ValidationError",
]
