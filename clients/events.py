"""The native stream as the client sees it: the shared protocol plus the client's errors.

The events, their parsing and the replay rule are `backtrack.events` (torch-free, the module the
server writes them with); this module only turns protocol violations into `ProtocolError`, an
`error` event into `StreamError`, and pairs each event with the visible text after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from backtrack import events as protocol
from backtrack.events import (
    BacktrackEvent,
    DoneEvent,
    ErrorEvent,
    Event,
    ProtocolViolation,
    TokenEvent,
    VisibleText,
)
from clients.errors import ProtocolError, stream_error
from clients.sse import ServerSentEvent

__all__ = [
    "BacktrackEvent",
    "DoneEvent",
    "Event",
    "StreamDecoder",
    "StreamUpdate",
    "TokenEvent",
    "VisibleText",
    "parse_event",
]


@dataclass(frozen=True)
class StreamUpdate:
    """One event of the stream and the visible text right after applying it."""

    event: Event
    text: str


def parse_event(sse: ServerSentEvent, status: int = 200) -> Event | None:
    """The typed event of one SSE message; None for names the client does not know (pings).

    A malformed message is a `ProtocolError`; an `error` event raises `StreamError` with the
    server's message.
    """
    if sse.event == ErrorEvent.kind:
        raise stream_error(status, sse.data)
    try:
        event = protocol.parse_event(sse.event, sse.data)
    except ProtocolViolation as exc:
        raise ProtocolError(str(exc)) from exc
    assert not isinstance(event, ErrorEvent)
    return event


class StreamDecoder:
    """Turns the SSE messages of one response into `StreamUpdate`s; shared by sync and async."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.visible = VisibleText()

    @property
    def finished(self) -> bool:
        return self.visible.done is not None

    def on_message(self, sse: ServerSentEvent) -> StreamUpdate | None:
        event = parse_event(sse, self.status)
        if event is None:
            return None
        try:
            return StreamUpdate(event, self.visible.apply(event))
        except ProtocolViolation as exc:
            raise ProtocolError(str(exc)) from exc

    def check_complete(self) -> None:
        """Called when the connection ends: a stream without `done` was cut short."""
        if not self.finished:
            raise ProtocolError("the stream ended before its done event")
