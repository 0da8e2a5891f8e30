"""Carry-planted errors: the digit a model writes when it misses the carry coming in.

In addition the likeliest wrong digit is not a random one: it is the right digit one too small,
written where a carry comes in from the digits below (for an answer written most significant
digit first, from digits the model has not written yet). `CarryPlanter` finds, from an
example's token ids alone, the answer positions that take a carry and plants that digit there,
so training shows the mistakes the task's own structure makes likely. Examples it cannot read as
an `a+b` sum (another task, a prompt without the operands' digits) get no planted error.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from training.data import Example
from training.errors import Injection


def carries_in(a: list[int], b: list[int]) -> list[int]:
    """For the sum of two equally long digit lists (most significant first), the carry into
    each digit of the answer (`len(a) + 1` digits, most significant first)."""
    carries = [0] * (len(a) + 1)
    carry = 0
    for index in range(len(a) - 1, -1, -1):
        carries[index + 1] = carry
        carry = (a[index] + b[index] + carry) // 10
    carries[0] = carry
    return carries


@dataclass(frozen=True)
class CarryPlanter:
    """Plants "one too small where a carry comes in" into addition examples, on token ids."""

    digit_of: dict[int, int]
    """Token id -> the digit it writes."""
    most_significant_first: bool = True
    """The answers' digit order (`addition_msd`; `addition` writes the least significant first)."""

    @classmethod
    def for_tokenizer(
        cls, tokenizer: PreTrainedTokenizerBase, most_significant_first: bool = True
    ) -> CarryPlanter:
        digit_of = {}
        for digit in range(10):
            ids = tokenizer.encode(str(digit), add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"the digit {digit} is not one token in this tokenizer")
            digit_of[ids[0]] = digit
        return cls(digit_of, most_significant_first)

    def candidates(self, example: Example) -> list[tuple[int, int]]:
        """(answer index, the digit one too small) wherever a carry comes in; [] if the example
        is not a sum written in the planter's digit order."""
        id_of = {digit: token for token, digit in self.digit_of.items()}
        answer = [self.digit_of.get(token) for token in example.response_ids[:-1]]
        if len(answer) < 2 or None in answer:
            return []
        width = len(answer) - 1
        operands = [self.digit_of[t] for t in example.prompt_ids if t in self.digit_of]
        if len(operands) < 2 * width:
            return []
        a, b = operands[-2 * width : -width], operands[-width:]
        total = int("".join(map(str, a))) + int("".join(map(str, b)))
        written = [int(d) for d in str(total).zfill(width + 1)]
        carries = carries_in(a, b)
        order = list(range(width + 1))
        if not self.most_significant_first:
            order.reverse()  # answer index i holds written[width - i]
        if answer != [written[column] for column in order]:
            return []
        return [
            (index, id_of[(written[column] - 1) % 10])
            for index, column in enumerate(order)
            if carries[column]
        ]

    def plant(self, example: Example, rng: random.Random) -> Injection | None:
        """One carry error at a random carry position; None when the answer takes no carry."""
        candidates = self.candidates(example)
        if not candidates:
            return None
        split, token = rng.choice(candidates)
        return Injection(split, (token,))
