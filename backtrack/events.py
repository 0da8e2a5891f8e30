"""The events a generation emits, in the order a client must apply them.

`token` appends text, `backtrack` erases the last shown token, `done` closes the stream. Applying
them in order (`replay`) gives exactly `DoneEvent.generated_text`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TokenEvent:
    index: int
    """Position of the token in the visible output (0-based); a backtrack frees it for reuse."""
    id: int
    text: str
    logprob: float

    kind = "token"


@dataclass(frozen=True)
class BacktrackEvent:
    index: int
    """Position of the erased token, equal to the `index` of the token event that showed it."""
    removed_id: int
    removed_text: str
    backtracks: int
    """Backtracks taken so far in this request, this one included."""

    kind = "backtrack"


@dataclass(frozen=True)
class DoneEvent:
    generated_text: str
    finish_reason: str
    """eos | length | stop | max_backtracks | cancelled | timeout | error"""
    generated_tokens: int
    """Tokens in the final (visible) output."""
    backtracks: int
    sampled_tokens: int
    """Every ordinary token drawn, the deleted ones included."""
    ignored_backtracks: int = 0
    """BTs the model asked for that had nothing it was allowed to delete."""
    removed_tokens: list[dict[str, Any]] = field(default_factory=list)
    """`{"id", "text", "index"}` of every deleted token, in deletion order."""
    seed: int | None = None
    prompt_tokens: int = 0

    kind = "done"


Event = TokenEvent | BacktrackEvent | DoneEvent


def event_payload(event: Event) -> dict[str, Any]:
    """The JSON body of an event as the native SSE stream sends it."""
    return asdict(event)


def replay(events: Iterable[Event]) -> str:
    """Apply token and backtrack events in order; what a live viewer shows at the end."""
    shown: list[str] = []
    for event in events:
        if isinstance(event, TokenEvent):
            if event.index != len(shown):
                raise ValueError(f"token event at index {event.index} but {len(shown)} are shown")
            shown.append(event.text)
        elif isinstance(event, BacktrackEvent):
            if event.index != len(shown) - 1:
                raise ValueError(f"backtrack at index {event.index} but {len(shown)} are shown")
            shown.pop()
    return "".join(shown)
