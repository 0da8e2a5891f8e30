"""Turning the decoder's edits of the visible output into the events a client sees.

The decoder appends and pops tokens; a client must only ever be told about tokens it may keep
on screen, in an order it can apply. This view holds back:

* the tail of the text that could still become a stop sequence (stop sequences never reach the
  client), and
* optionally (`hold_back_deletable`), every token a later backtrack could still delete, so
  clients that cannot erase (OpenAI, TGI) never receive a token that is later removed.

A token popped before it was shown is dropped silently; one popped after it was shown becomes a
`backtrack` event. At the end everything left is flushed, cut at the stop sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

from backtrack.events import BacktrackEvent, Event, TokenEvent, TokenScore


@dataclass(frozen=True)
class VisibleToken:
    id: int
    text: str
    logprob: float
    score: TokenScore | None = None


@dataclass(frozen=True)
class VisibleOutput:
    """The decoder's current output, as parallel lists (read, never copied, on every step)."""

    ids: list[int]
    texts: list[str]
    logprobs: list[float]
    scores: list[TokenScore | None]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> VisibleToken:
        score = self.scores[index]
        return VisibleToken(self.ids[index], self.texts[index], self.logprobs[index], score)


class StreamView:
    def __init__(self) -> None:
        self.shown: list[VisibleToken] = []

    def on_pop(self, index: int, backtracks: int) -> list[Event]:
        """The decoder erased the token at `index` (always the last visible one)."""
        if index >= len(self.shown):
            return []
        removed = self.shown.pop()
        return [BacktrackEvent(index, removed.id, removed.text, backtracks)]

    def release(self, visible: VisibleOutput, limit: int) -> list[Event]:
        """Show the visible tokens up to (not including) index `limit` that are not shown yet."""
        events: list[Event] = []
        for index in range(len(self.shown), min(limit, len(visible))):
            token = visible[index]
            self.shown.append(token)
            events.append(TokenEvent(index, token.id, token.text, token.logprob, token.score))
        return events

    def flush(self, visible: VisibleOutput, text_length: int) -> list[Event]:
        """Show the rest of the output, cut so that exactly `text_length` characters are shown."""
        shown_length = sum(len(token.text) for token in self.shown)
        events: list[Event] = []
        for index in range(len(self.shown), len(visible)):
            if shown_length >= text_length and visible[index].text:
                break
            token = visible[index]
            text = token.text[: max(0, text_length - shown_length)]
            shown_length += len(text)
            self.shown.append(VisibleToken(token.id, text, token.logprob, token.score))
            events.append(TokenEvent(index, token.id, text, token.logprob, token.score))
        return events
