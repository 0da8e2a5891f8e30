"""One task problem: the prompt and the response a correct model writes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    prompt: str
    response: str
