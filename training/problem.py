"""One task problem: the prompt and the response a correct model writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    prompt: str
    response: str


WrongAnswers = Callable[[str, str], "list[str] | None"]
"""A search task's (prompt, right answer) -> every wrong answer a search may walk; None for
another task's text (`training.wrong_branches`)."""
