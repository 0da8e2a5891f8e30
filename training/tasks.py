"""The bundled synthetic task: multi-digit addition, checkable exactly, with no download.

    prompt   "123+456="      operands zero-padded to `digits`
    response "9750"          the sum's digits least significant first, zero-padded to digits+1

Writing the answer least significant first makes every digit a function of the operands and the
carry from the digit before it, so a small model can learn it one token at a time, and a wrong
digit is detectable from the context alone. The train and held-out splits are fixed by a seed and
never share a problem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TASKS = ("addition",)


@dataclass(frozen=True)
class Problem:
    prompt: str
    response: str


@dataclass(frozen=True)
class AdditionTask:
    digits: int = 3
    seed: int = 1234

    def problem(self, a: int, b: int) -> Problem:
        width = self.digits
        answer = str(a + b).zfill(width + 1)[::-1]
        return Problem(f"{a:0{width}d}+{b:0{width}d}=", answer)

    def splits(self, train_size: int, eval_size: int) -> tuple[list[Problem], list[Problem]]:
        """Disjoint (train, eval) problem lists, the same for the same seed and sizes.

        The held-out set is drawn first, so it does not depend on `train_size`; training problems
        are drawn with replacement from everything else.
        """
        limit = 10**self.digits
        if eval_size >= limit * limit:
            raise ValueError(
                f"data.eval_size must be below {limit * limit} for {self.digits} digits"
            )
        rng = random.Random(self.seed)
        held_out: set[tuple[int, int]] = set()
        while len(held_out) < eval_size:
            held_out.add((rng.randrange(limit), rng.randrange(limit)))
        train: list[Problem] = []
        while len(train) < train_size:
            pair = (rng.randrange(limit), rng.randrange(limit))
            if pair not in held_out:
                train.append(self.problem(*pair))
        return train, [self.problem(a, b) for a, b in sorted(held_out)]


def load_task(name: str, digits: int, seed: int) -> AdditionTask:
    if name not in TASKS:
        raise ValueError(f"data.task must be one of {TASKS}, got {name!r}")
    return AdditionTask(digits=digits, seed=seed)
