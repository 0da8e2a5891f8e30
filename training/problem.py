"""One task problem: the prompt and the response a correct model writes."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    prompt: str
    response: str


WrongAnswers = Callable[[str, str], "list[str] | None"]
"""A search task's (prompt, right answer) -> every wrong answer a search may walk; None for
another task's text (`training.wrong_branches`)."""


def disjoint_splits(
    draw: Callable[[random.Random], Problem], seed: int, train_size: int, eval_size: int
) -> tuple[list[Problem], list[Problem]]:
    """Disjoint (train, eval) lists of drawn problems, the same for the same seed; the held-out
    prompts are drawn first, so they do not depend on `train_size`."""
    rng = random.Random(seed)
    held_out: dict[str, Problem] = {}
    while len(held_out) < eval_size:
        problem = draw(rng)
        held_out[problem.prompt] = problem
    train: list[Problem] = []
    while len(train) < train_size:
        problem = draw(rng)
        if problem.prompt not in held_out:
            train.append(problem)
    return train, sorted(held_out.values(), key=lambda problem: problem.prompt)
