"""Error injection on token ids: where a response goes wrong, and with which tokens.

An injection picks a split point in the response and k error tokens; the objective
(`training.objectives`) then lays out `prefix e1..ek` and what follows. Two sources of errors:

* `random`: uniform over the non-special vocabulary (the original design). Easy to spot, so it
  teaches little about the mistakes a model really makes.
* `in_distribution`: drawn from the distribution of response tokens (for arithmetic, a wrong
  digit where a digit stands): the mistakes a model actually makes at low temperature.
* `mixed`: a mixture of the two (`random_error_share` of the draws uniform). Sampling at high
  temperature mostly goes wrong on tokens the responses never hold (a letter, a `+`), which the
  in-distribution source never shows, and random errors alone teach too few wrong digits: each
  source teaches the errors it shows, so the mixture covers both.

The first error token always differs from the correct token at the split, so it really is an
error. Injection never decodes text: random tokens would merge or split on re-tokenisation and
break "k BTs delete k errors".
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from training.data import Example


@dataclass
class ErrorPlan:
    """How many examples are corrupted and how badly; the curriculum changes it during training."""

    max_errors: int = 0
    error_share: float = 0.0

    @property
    def clean(self) -> bool:
        return self.max_errors == 0 or self.error_share == 0


@dataclass(frozen=True)
class Injection:
    split: int
    """Index into the response where the errors go: `response[:split]` is the correct prefix."""
    errors: tuple[int, ...]
    trace: bool = False
    """The errors are a wrong path walked to where it shows itself (`training.wrong_branches`):
    after the first error the model writes them as ordinary next tokens, and BT follows only the
    last. Otherwise every error is seen at once: each is followed by BT."""


@dataclass
class ErrorSource:
    """Draws error tokens from a weighted vocabulary (uniform for `random`)."""

    token_ids: list[int]
    weights: list[float] | None = None

    def draw(self, rng: random.Random, count: int, avoid: int | None = None) -> list[int]:
        """`count` tokens; the first differs from `avoid` (the correct token at the split)."""
        tokens = rng.choices(self.token_ids, weights=self.weights, k=count)
        for _ in range(64):  # a source with only `avoid` in it cannot do better
            if tokens[0] != avoid:
                break
            tokens[0] = rng.choices(self.token_ids, weights=self.weights, k=1)[0]
        return tokens


def random_source(vocab_size: int, special_ids: Iterable[int]) -> ErrorSource:
    special = set(special_ids)
    return ErrorSource([token for token in range(vocab_size) if token not in special])


def in_distribution_source(examples: Iterable[Example], special_ids: Iterable[int]) -> ErrorSource:
    """The unigram distribution of response tokens, special tokens (EOS) left out."""
    special = set(special_ids)
    counts = Counter(
        token for example in examples for token in example.response_ids if token not in special
    )
    if not counts:
        raise ValueError("the training responses hold no ordinary token to draw errors from")
    tokens = sorted(counts)
    return ErrorSource(tokens, [float(counts[token]) for token in tokens])


def mixed_source(
    examples: Iterable[Example], vocab_size: int, special_ids: Iterable[int], random_share: float
) -> ErrorSource:
    """`random_share` of the probability spread uniformly, the rest as the response unigram."""
    special = list(special_ids)
    uniform = random_source(vocab_size, special)
    unigram = in_distribution_source(examples, special)
    total = sum(unigram.weights or [])
    weights = dict.fromkeys(uniform.token_ids, random_share / len(uniform.token_ids))
    for token, weight in zip(unigram.token_ids, unigram.weights or [], strict=True):
        weights[token] = weights.get(token, 0.0) + (1 - random_share) * weight / total
    tokens = sorted(weights)
    return ErrorSource(tokens, [weights[token] for token in tokens])


def out_of_distribution_source(
    examples: Iterable[Example], vocab_size: int, special_ids: Iterable[int]
) -> ErrorSource:
    """Ordinary tokens no response holds (for arithmetic: anything but a digit)."""
    seen = set(in_distribution_source(examples, special_ids).token_ids)
    tokens = [t for t in random_source(vocab_size, special_ids).token_ids if t not in seen]
    if not tokens:
        raise ValueError("every ordinary token appears in the responses")
    return ErrorSource(tokens)


def build_source(
    name: str,
    examples: list[Example],
    vocab_size: int,
    special_ids: Iterable[int],
    random_share: float = 0.5,
) -> ErrorSource:
    special = list(special_ids)
    if name == "random":
        return random_source(vocab_size, special)
    if name == "mixed":
        return mixed_source(examples, vocab_size, special, random_share)
    return in_distribution_source(examples, special)


@dataclass
class Injector:
    """Decides per example whether and how it is corrupted, and counts what it did."""

    source: ErrorSource
    plan: ErrorPlan = field(default_factory=ErrorPlan)
    seed: int = 0
    counts: Counter = field(default_factory=Counter)
    """Number of injected errors per example (0 = clean) since the last `take_counts()`."""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __call__(self, example: Example) -> Injection | None:
        injection = self._draw(example)
        self.counts[0 if injection is None else len(injection.errors)] += 1
        return injection

    def choose(self, example: Example) -> tuple[Example, Injection | None]:
        """The example to train in this slot and its errors: here always `example` itself;
        an injector holding ready-made examples (mined errors) may put one of them instead."""
        return example, self(example)

    def _draw(self, example: Example) -> Injection | None:
        if self.plan.clean or not example.response_ids:
            return None
        if self.rng.random() >= self.plan.error_share:
            return None
        count = self.rng.randint(1, self.plan.max_errors)
        split = self.rng.randrange(len(example.response_ids))
        errors = self.source.draw(self.rng, count, avoid=example.response_ids[split])
        return Injection(split, tuple(errors))

    def take_counts(self) -> dict[int, int]:
        """The error-count histogram since the last call, then start counting afresh."""
        counts = dict(sorted(self.counts.items()))
        self.counts.clear()
        return counts
