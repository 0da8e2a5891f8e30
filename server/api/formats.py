"""The final token list the response formats share (finish reasons: `server.api.finish_reasons`)."""

from __future__ import annotations

from dataclasses import dataclass

from backtrack.events import Event, TokenScore, VisibleText


@dataclass(frozen=True)
class FinalToken:
    id: int
    text: str
    logprob: float
    score: TokenScore | None = None
    """Its score from the step that drew it, when the request asked (`TokenEvent.score`)."""

    def tgi(self, special_ids: frozenset[int] = frozenset()) -> dict:
        special = self.id in special_ids
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": special}


def final_tokens(events: list[Event]) -> list[FinalToken]:
    """The tokens left on screen once every token and backtrack event is applied."""
    visible = VisibleText()
    for event in events:
        visible.apply(event)
    return [FinalToken(t.id, t.text, t.logprob, t.score) for t in visible.tokens]
