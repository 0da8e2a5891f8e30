"""The bundled synthetic tasks, checkable exactly, with no download.

`addition`, for a model trained from scratch with a character tokenizer:

    prompt   "123+456="      operands zero-padded to `digits`
    response "9750"          the sum's digits least significant first, zero-padded to digits+1

Writing the answer least significant first makes every digit a function of the operands and the
carry from the digit before it, so a small model can learn it one token at a time, and a wrong
digit is detectable from the context alone.

`addition_msd`, the same sums with the answer most significant digit first:

    prompt   "12345+67890="  operands zero-padded to `digits`
    response "080235"        the sum's digits most significant first, zero-padded to digits+1

Here a digit depends on the carry out of every digit still to be written, which a small model
trained briefly often gets wrong at greedy decoding; but one step later, working on the next
digit, the carry it now sees tells it the digit before was one too small: a mistake the model
can detect after making it, which is what backtracking needs to help greedy decoding.

`word_addition`, for a pretrained model, where pretraining matters: numbers written in English
words, which a model trained from scratch would first have to learn to read and spell:

    prompt   "Q: What is forty-seven plus eight?\nA:"
    response " fifty-five"

`path_star` (`training.path_star`): the path from the centre of a star-shaped graph to the leaf
given as the goal, a planning task that models trained on correct paths alone get wrong about as
often as there are wrong arms, and that backtracking turns into a search.

`checksum` (`training.checksum`): pick the one number whose digits sum to the target (mod 10),
writing its running sums; the same search as `path_star` for a model trained from scratch (every
step is a two-digit addition at a fixed offset, not a lookup).

Each task's train and held-out splits are fixed by a seed and never share a problem.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from training import checksum, path_star
from training.checksum import ChecksumTask
from training.path_star import PathStarTask
from training.problem import Problem, WrongAnswers

__all__ = [
    "SEARCH_TASKS", "TASKS", "AdditionTask", "ChecksumTask", "PathStarTask", "Problem",
    "WordAdditionTask", "load_task",
]  # fmt: skip

SEARCH_TASKS: dict[str, WrongAnswers] = {
    "path_star": path_star.wrong_answers,
    "checksum": checksum.wrong_answers,
}
"""The tasks whose wrong branches `backtrack.wrong_branch_share` walks, with how to find them."""
TASKS = ("addition", "addition_msd", "word_addition", *SEARCH_TASKS)


@dataclass(frozen=True)
class AdditionTask:
    digits: int = 3
    seed: int = 1234
    short_operand_share: float = 0.0
    """Training operands drawn with fewer digits (zero-padded), each with this probability."""
    most_significant_first: bool = False
    """`addition_msd`: the answer's digits in reading order rather than least significant first."""
    chain_share: float = 0.0
    """Each column's two digits sum to 9 with this probability (in both splits), so carries
    ripple through runs of such columns: with the answer most significant digit first, a digit
    then depends on the first column below that does not sum to 9, however far down."""

    def problem(self, a: int, b: int) -> Problem:
        width = self.digits
        answer = str(a + b).zfill(width + 1)
        if not self.most_significant_first:
            answer = answer[::-1]
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
            if self.chain_share:
                held_out.add(self._chained(rng, self.digits))
            else:
                held_out.add((rng.randrange(limit), rng.randrange(limit)))
        train: list[Problem] = []
        while len(train) < train_size:
            pair = self._training_pair(rng)
            if pair not in held_out:
                train.append(self.problem(*pair))
        return train, [self.problem(a, b) for a, b in sorted(held_out)]

    def _training_pair(self, rng: random.Random) -> tuple[int, int]:
        if not self.chain_share:
            return self._operand(rng), self._operand(rng)
        width = self.digits
        if width > 1 and self.short_operand_share and rng.random() < self.short_operand_share:
            width = rng.randint(1, self.digits - 1)
        return self._chained(rng, width)

    def _chained(self, rng: random.Random, width: int) -> tuple[int, int]:
        """Operands of `width` digits whose columns sum to 9 with probability `chain_share`."""
        a = b = 0
        for _ in range(width):
            top = rng.randrange(10)
            bottom = 9 - top if rng.random() < self.chain_share else rng.randrange(10)
            a, b = 10 * a + top, 10 * b + bottom
        return a, b

    def _operand(self, rng: random.Random) -> int:
        """A training operand: mostly full width; short ones give every digit position examples
        where it alone carries the answer, which is how each position's alignment gets learned."""
        width = self.digits
        if width > 1 and self.short_operand_share and rng.random() < self.short_operand_share:
            width = rng.randint(1, self.digits - 1)
        return rng.randrange(10**width)


ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(number: int) -> str:
    """0..999 in English words, as written in prose: `forty-seven`, `one hundred eight`."""
    if not 0 <= number < 1000:
        raise ValueError(f"number_words covers 0..999, got {number}")
    hundreds, rest = divmod(number, 100)
    words = [f"{ONES[hundreds]} hundred"] if hundreds else []
    if rest or not hundreds:
        tens, ones = divmod(rest, 10)
        if rest < 20:
            words.append(ONES[rest])
        else:
            words.append(TENS[tens] + (f"-{ONES[ones]}" if ones else ""))
    return " ".join(words)


@dataclass(frozen=True)
class WordAdditionTask:
    """A number up to `max_first` plus one up to `max_second`, question and answer in words."""

    max_first: int = 99
    max_second: int = 19
    seed: int = 1234

    def problem(self, a: int, b: int) -> Problem:
        question = f"Q: What is {number_words(a)} plus {number_words(b)}?\nA:"
        return Problem(question, " " + number_words(a + b))

    def splits(self, train_size: int, eval_size: int) -> tuple[list[Problem], list[Problem]]:
        """Disjoint (train, eval) lists; training problems drawn with replacement from the rest."""
        pairs = [(a, b) for a in range(self.max_first + 1) for b in range(1, self.max_second + 1)]
        if eval_size >= len(pairs):
            raise ValueError(f"data.eval_size must be below {len(pairs)} for word_addition")
        rng = random.Random(self.seed)
        rng.shuffle(pairs)
        held_out, rest = pairs[:eval_size], pairs[eval_size:]
        train = [self.problem(*rng.choice(rest)) for _ in range(train_size)]
        return train, [self.problem(a, b) for a, b in sorted(held_out)]


Task = AdditionTask | WordAdditionTask | PathStarTask | ChecksumTask


def load_task(
    name: str,
    digits: int,
    seed: int,
    short_operand_share: float = 0.0,
    chain_share: float = 0.0,
    branches: int = 4,
    branch_length: int = 4,
) -> Task:
    if name not in TASKS:
        raise ValueError(f"data.task must be one of {TASKS}, got {name!r}")
    if name == "word_addition":
        return WordAdditionTask(seed=seed)
    if name == "path_star":
        return PathStarTask(branches, branch_length, seed)
    if name == "checksum":
        return ChecksumTask(branches, branch_length, seed)
    return AdditionTask(
        digits=digits,
        seed=seed,
        short_operand_share=short_operand_share,
        most_significant_first=name == "addition_msd",
        chain_share=chain_share,
    )
