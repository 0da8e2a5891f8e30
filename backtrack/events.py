"""The wire protocol: the events a generation emits and the rule for applying them.

One torch-free module that the server (which writes the events) and `clients/` (which read them)
both import, so an event field is added once. `token` appends text at `index`, `backtrack` erases
the token at `index` (always the last one shown), `done` closes the stream with the final text,
`error` reports a failed generation (a `done` with `finish_reason` "error" follows it). Applying
them in order (`VisibleText`, `replay`) gives exactly `DoneEvent.generated_text`.

    >>> text = VisibleText()
    >>> for event in [TokenEvent(0, 5, "a", -0.1), TokenEvent(1, 6, "x", -2.3),
    ...               BacktrackEvent(1, 6, "x", 1), TokenEvent(1, 7, "b", -0.2)]:
    ...     _ = text.apply(event)
    >>> text.text
    'ab'
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


class ProtocolViolation(ValueError):
    """A stream that breaks the protocol: malformed data, a missing field, events out of order."""


@dataclass(frozen=True)
class TokenScore:
    """A token's log-probability under the model's own distribution at its position (no
    temperature, penalty or ban; BT included), and the most likely tokens there: what OpenAI's
    `logprobs` report, taken from the decoding step's own logits."""

    logprob: float
    top: tuple[tuple[int, float], ...]
    """(id, logprob) of the most likely tokens at that position, best first."""


@dataclass(frozen=True)
class TokenEvent:
    index: int
    """Position of the token in the visible output (0-based); a backtrack frees it for reuse."""
    id: int
    """The token id."""
    text: str
    """The text the token adds (possibly empty while a multi-byte character is incomplete)."""
    logprob: float
    """Its log-probability under the distribution it was drawn from."""
    score: TokenScore | None = field(default=None, compare=False, repr=False)
    """Asked for by the request (`score_top`): its score from the step that drew it. Kept in
    the process: the native stream does not send it."""

    kind: ClassVar[str] = "token"


@dataclass(frozen=True)
class BacktrackEvent:
    index: int
    """Position of the erased token, equal to the `index` of the token event that showed it."""
    removed_id: int
    """Id of the erased token."""
    removed_text: str
    """Text of the erased token."""
    backtracks: int
    """Backtracks taken so far in this request, this one included."""

    kind: ClassVar[str] = "backtrack"


@dataclass(frozen=True)
class DoneEvent:
    generated_text: str
    """The final text after every deletion (what a non-streaming request returns)."""
    finish_reason: str
    """eos | length | stop | cancelled | timeout | shutdown | error"""
    generated_tokens: int
    """Tokens in the final (visible) output."""
    backtracks: int
    """Backtracks taken."""
    sampled_tokens: int = 0
    """Every ordinary token drawn, the deleted ones included."""
    ignored_backtracks: int = 0
    """BTs that had nothing they were allowed to delete (the prompt, past max_backtrack_depth)."""
    removed_tokens: list[dict[str, Any]] = field(default_factory=list)
    """`{"id", "text", "index"}` of every deleted token, in deletion order."""
    seed: int | None = None
    """The seed the sampler used."""
    prompt_tokens: int = 0
    """Tokens in the prompt."""
    backtrack_budget_exhausted: bool = False
    """The request spent all `max_backtracks` deletions; backtracking was off from then on and
    decoding went on to EOS, a stop or the length limit (never true with max_backtracks 0)."""

    kind: ClassVar[str] = "done"


@dataclass(frozen=True)
class ErrorEvent:
    error: str
    """What went wrong, for a person."""
    error_type: str
    """TGI's error type: `generation` for a failed generation."""

    kind: ClassVar[str] = "error"


Event = TokenEvent | BacktrackEvent | DoneEvent
"""The events a generation yields; `ErrorEvent` exists only on the wire."""
EVENT_TYPES: dict[str, type[TokenEvent | BacktrackEvent | DoneEvent | ErrorEvent]] = {
    event_type.kind: event_type
    for event_type in (TokenEvent, BacktrackEvent, DoneEvent, ErrorEvent)
}


def event_payload(event: Event | ErrorEvent) -> dict[str, Any]:
    """The JSON body of an event as the native SSE stream sends it."""
    payload = asdict(event)
    payload.pop("score", None)
    return payload


def parse_event(name: str, data: str) -> Event | ErrorEvent | None:
    """The typed event of one SSE message; None for names the protocol does not define (pings).

    Unknown JSON keys are ignored so a newer server does not break an older client; a missing
    key, or data that is not a JSON object, is a `ProtocolViolation`.
    """
    event_type = EVENT_TYPES.get(name)
    if event_type is None:
        return None
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise ProtocolViolation(f"{name} event data is not JSON: {data[:200]!r}") from exc
    if not isinstance(payload, dict):
        raise ProtocolViolation(f"{name} event data is not an object: {data[:200]!r}")
    known = {f.name for f in fields(event_type)}
    try:
        return event_type(**{key: value for key, value in payload.items() if key in known})
    except TypeError as exc:
        raise ProtocolViolation(f"{name} event is missing fields: {exc}") from exc


class VisibleText:
    """The replay rule: the tokens on screen, built by applying events in order."""

    def __init__(self) -> None:
        self.tokens: list[TokenEvent] = []
        self.done: DoneEvent | None = None

    @property
    def text(self) -> str:
        """The final text once `done` arrived, else what the tokens on screen spell."""
        if self.done is not None:
            return self.done.generated_text
        return "".join(token.text for token in self.tokens)

    def apply(self, event: Event | ErrorEvent) -> str:
        """Apply one event and return the visible text; out-of-order events are violations."""
        if isinstance(event, TokenEvent):
            if event.index != len(self.tokens):
                raise ProtocolViolation(
                    f"token event at index {event.index} but {len(self.tokens)} are shown"
                )
            self.tokens.append(event)
        elif isinstance(event, BacktrackEvent):
            if event.index != len(self.tokens) - 1:
                raise ProtocolViolation(
                    f"backtrack at index {event.index} but {len(self.tokens)} are shown"
                )
            self.tokens.pop()
        elif isinstance(event, DoneEvent):
            self.done = event
        return self.text


def replay(events: Iterable[Event]) -> str:
    """Apply token and backtrack events in order; what a live viewer shows before `done`."""
    visible = VisibleText()
    for event in events:
        if not isinstance(event, DoneEvent):
            visible.apply(event)
    return visible.text
