"""`checksum`: pick the one number whose digits sum to the target (mod 10), writing the running
sum as you read it, for a small model trained from scratch.

    prompt   "a317 b052 c946 =7:"    `branches` numbers of `branch_length` digits, labelled a, b, ...
    response "b057"                  the label, then the running digit sum mod 10 of that number

Exactly one number's digit sum is the target (mod 10). Every answer token after the label is one
addition of two digits (the sum so far and the next digit of the chosen number, at a fixed
offset), which a small model learns quickly; the label needs every number's sum at once, in one
forward pass, before any of them is written, which the same model does not learn in the same
budget, so trained on right answers alone it picks a number about at random. A wrong pick shows
itself at the answer's last sum, which is not the target: so a model that writes a number's
sums, deletes them where the last one misses and tries the next label finds the answer, as on
`path_star` (the same training pieces, `training.wrong_branches`; no lookups to learn).

One token per character in the character tokenizer. The train and held-out splits never share a
prompt.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from itertools import accumulate

from training.problem import Problem, disjoint_splits

LABELS = string.ascii_lowercase
QUERY_PATTERN = re.compile(r"(?P<numbers>(?:[a-z]\d+ )+)=(?P<target>\d):")


def running_sums(digits: str) -> str:
    """The digit sums mod 10 after each digit: `052` -> `057`."""
    return "".join(str(total % 10) for total in accumulate(int(digit) for digit in digits))


@dataclass(frozen=True)
class ChecksumTask:
    branches: int = 3
    branch_length: int = 3
    seed: int = 1234

    def __post_init__(self) -> None:
        if not 2 <= self.branches <= len(LABELS) or self.branch_length < 1:
            raise ValueError(
                f"checksum needs 2 to {len(LABELS)} numbers (branches) of at least 1 digit"
            )

    def numbers(self, rng: random.Random) -> tuple[list[str], int]:
        """`branches` numbers of which exactly one has the target's digit sum, and its index."""
        while True:
            numbers = [
                "".join(rng.choice(string.digits) for _ in range(self.branch_length))
                for _ in range(self.branches)
            ]
            sums = [running_sums(number)[-1] for number in numbers]
            right = rng.randrange(self.branches)
            if sums.count(sums[right]) == 1:
                return numbers, right

    def problem(self, numbers: list[str], right: int) -> Problem:
        listed = "".join(f"{LABELS[index]}{number} " for index, number in enumerate(numbers))
        target = running_sums(numbers[right])[-1]
        return Problem(f"{listed}={target}:", answer_for(LABELS[right], numbers[right]))

    def splits(self, train_size: int, eval_size: int) -> tuple[list[Problem], list[Problem]]:
        """Disjoint (train, eval) lists, the same for the same seed (`disjoint_splits`)."""
        return disjoint_splits(
            lambda rng: self.problem(*self.numbers(rng)), self.seed, train_size, eval_size
        )


def answer_for(label: str, number: str) -> str:
    return label + running_sums(number)


def read_numbers(prompt: str) -> tuple[dict[str, str], str] | None:
    """(each label's number, target digit) from a `checksum` prompt; None for another text.
    Read from the last match, so a chat template's text around the task's does no harm."""
    found = list(QUERY_PATTERN.finditer(prompt))
    if not found:
        return None
    last = found[-1]
    numbers = dict((entry[0], entry[1:]) for entry in last["numbers"].split())
    return numbers, last["target"]


def wrong_answers(prompt: str, answer: str) -> list[str] | None:
    """What the answer would be for every other number (each ends in a sum that is not the
    target); None when `prompt` is not this task's or `answer` is not one of its numbers."""
    read = read_numbers(prompt)
    if read is None:
        return None
    candidates = [answer_for(label, number) for label, number in read[0].items()]
    if answer not in candidates:
        return None
    return [candidate for candidate in candidates if candidate != answer]
