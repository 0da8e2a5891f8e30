"""Shapes shared by the response formats: finish-reason names and the final token list."""

from __future__ import annotations

from dataclasses import dataclass

from backtrack.events import Event, VisibleText

TGI_FINISH_REASONS = {"eos": "eos_token", "stop": "stop_sequence", "length": "length"}
"""TGI's names; our other reasons (timeout, cancelled, shutdown) pass through."""
OPENAI_FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


def tgi_finish_reason(reason: str) -> str:
    return TGI_FINISH_REASONS.get(reason, reason)


def openai_finish_reason(reason: str) -> str:
    return OPENAI_FINISH_REASONS.get(reason, reason)


@dataclass(frozen=True)
class FinalToken:
    id: int
    text: str
    logprob: float

    def tgi(self, special_ids: frozenset[int] = frozenset()) -> dict:
        special = self.id in special_ids
        return {"id": self.id, "text": self.text, "logprob": self.logprob, "special": special}


def final_tokens(events: list[Event]) -> list[FinalToken]:
    """The tokens left on screen once every token and backtrack event is applied."""
    visible = VisibleText()
    for event in events:
        visible.apply(event)
    return [FinalToken(token.id, token.text, token.logprob) for token in visible.tokens]
