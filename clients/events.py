"""Typed events of the native stream and the visible text they build.

The dataclasses mirror `backtrack.events` field for field (a test keeps them in step) so that
the client needs neither torch nor transformers. Applying the events in order is what every
viewer does: a `token` appends at `index`, a `backtrack` erases the token at `index` (always the
last one shown), `done` carries the final text after deletions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from clients.errors import ProtocolError, stream_error
from clients.sse import ServerSentEvent


@dataclass(frozen=True)
class TokenEvent:
    index: int
    """Position of the token in the visible output; a backtrack frees it for reuse."""
    id: int
    text: str
    logprob: float

    kind: ClassVar[str] = "token"


@dataclass(frozen=True)
class BacktrackEvent:
    index: int
    """Position of the erased token, the `index` of the token event that showed it."""
    removed_id: int
    removed_text: str
    backtracks: int
    """Backtracks taken so far in this request, this one included."""

    kind: ClassVar[str] = "backtrack"


@dataclass(frozen=True)
class DoneEvent:
    generated_text: str
    """The final text after every deletion (what `generate` returns)."""
    finish_reason: str
    """eos | length | stop | max_backtracks | cancelled | timeout | error"""
    generated_tokens: int
    """Tokens in the final (visible) output."""
    backtracks: int
    sampled_tokens: int = 0
    """Every ordinary token drawn, the deleted ones included."""
    ignored_backtracks: int = 0
    removed_tokens: list[dict[str, Any]] = field(default_factory=list)
    """`{"id", "text", "index"}` of every deleted token, in deletion order."""
    seed: int | None = None
    prompt_tokens: int = 0

    kind: ClassVar[str] = "done"


Event = TokenEvent | BacktrackEvent | DoneEvent
EVENT_TYPES: dict[str, type[TokenEvent] | type[BacktrackEvent] | type[DoneEvent]] = {
    "token": TokenEvent,
    "backtrack": BacktrackEvent,
    "done": DoneEvent,
}


@dataclass(frozen=True)
class StreamUpdate:
    """One event of the stream and the visible text right after applying it."""

    event: Event
    text: str


def parse_event(sse: ServerSentEvent, status: int = 200) -> Event | None:
    """The typed event of one SSE message; None for names the client does not know (pings).

    Unknown JSON keys are ignored so a newer server does not break an older client; a missing
    key is a protocol error. An `error` event raises `StreamError` with the server's message.
    """
    if sse.event == "error":
        raise stream_error(status, sse.data)
    event_type = EVENT_TYPES.get(sse.event)
    if event_type is None:
        return None
    try:
        payload = json.loads(sse.data)
    except ValueError as exc:
        raise ProtocolError(f"{sse.event} event data is not JSON: {sse.data[:200]!r}") from exc
    if not isinstance(payload, dict):
        raise ProtocolError(f"{sse.event} event data is not an object: {sse.data[:200]!r}")
    known = {f.name for f in fields(event_type)}
    try:
        return event_type(**{key: value for key, value in payload.items() if key in known})
    except TypeError as exc:
        raise ProtocolError(f"{sse.event} event is missing fields: {exc}") from exc


class VisibleText:
    """The text a viewer shows, built by applying events in order."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.done: DoneEvent | None = None

    @property
    def text(self) -> str:
        if self.done is not None:
            return self.done.generated_text
        return "".join(self.tokens)

    def apply(self, event: Event) -> str:
        """Apply one event and return the visible text; out-of-order events are protocol errors."""
        if isinstance(event, TokenEvent):
            if event.index != len(self.tokens):
                raise ProtocolError(
                    f"token at index {event.index} but {len(self.tokens)} tokens are shown"
                )
            self.tokens.append(event.text)
        elif isinstance(event, BacktrackEvent):
            if event.index != len(self.tokens) - 1:
                raise ProtocolError(
                    f"backtrack at index {event.index} but {len(self.tokens)} tokens are shown"
                )
            self.tokens.pop()
        else:
            self.done = event
        return self.text


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
        return StreamUpdate(event, self.visible.apply(event))

    def check_complete(self) -> None:
        """Called when the connection ends: a stream without `done` was cut short."""
        if not self.finished:
            raise ProtocolError("the stream ended before its done event")
