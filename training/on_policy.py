"""On-policy errors: the mistakes the model being trained really makes, taught as backtracks.

Synthetic errors (`training.errors`) teach the model to delete tokens it would itself rarely
write, so at greedy decoding backtracking has nothing to repair. Mining closes that gap: decode
the current model's own answers to training problems (with the server's batch decoder, BT
suppressed), find the first wrong token of each wrong answer, and train exactly that:
`prefix wrong BT right-continuation` (an `Injection` at the first wrong index, laid out by the
configured objective like any injected error). `OnPolicyCallback` re-mines at the configured
steps, so later rounds teach the errors of the model as it is then; `SelfCorrectionInjector`
mixes the mined errors with synthetic and carry-planted ones.

An answer that ends too early (EOS where a digit belongs) yields no example: EOS ends a request
at once, so no backtrack could follow it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from backtrack.batch import decode_all, final_event
from backtrack.events import BacktrackEvent, Event, TokenEvent
from backtrack.params import GenerationParams
from backtrack.row import eos_token_ids
from training.carry import CarryPlanter
from training.data import Example
from training.errors import Injection, Injector
from training.wrong_branches import WrongBranchPlanter

logger = logging.getLogger(__name__)


def visible_ids(events: Iterable[Event]) -> list[int]:
    """The token ids a stream of events leaves visible (appends minus deletions)."""
    ids: list[int] = []
    for event in events:
        if isinstance(event, TokenEvent):
            del ids[event.index :]
            ids.append(event.id)
        elif isinstance(event, BacktrackEvent):
            del ids[event.index :]
    return ids


def first_error(
    produced: Sequence[int], expected: Sequence[int], eos_ids: frozenset[int], span: int = 1
) -> Injection | None:
    """The first token of `produced` (the answer, EOS included when it ended on one) that
    differs from `expected` (the response with its EOS), as an injection there, with up to
    `span - 1` of the model's own tokens after it (a mistake it may only see a few digits
    later); None when the answer is right, or its first wrong token is EOS or missing."""
    for index, token in enumerate(produced):
        if index >= len(expected):
            return None  # `expected` ends with EOS, so an answer that reaches here matched it
        if token != expected[index]:
            if token in eos_ids:
                return None
            errors = []
            for follower in produced[index : index + span]:
                if follower in eos_ids:
                    break
                errors.append(follower)
            return Injection(index, tuple(errors))
    return None


@dataclass
class MiningResult:
    mined: dict[Example, Injection]
    problems: int
    correct: int
    """Answers exactly right (the model's accuracy on these training problems)."""
    unusable: int
    """Wrong answers whose first wrong token could not be deleted (EOS, or cut off)."""


@torch.inference_mode()
def mine(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    backtrack_id: int,
    examples: Sequence[Example],
    temperature: float = 0.0,
    seed: int = 0,
    max_rows: int = 64,
    span: int = 1,
) -> MiningResult:
    """Decode each example's prompt with BT suppressed; the first wrong token of every wrong
    answer becomes that example's mined injection."""
    eos = frozenset(eos_token_ids(model, tokenizer))
    requests = []
    for index, example in enumerate(examples):
        params = GenerationParams(
            max_new_tokens=len(example.response_ids) + 4,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            seed=seed + index,
            backtrack_policy="never",
        )
        requests.append((list(example.prompt_ids), params))
    was_training = model.training
    model.eval()
    result = MiningResult({}, len(examples), 0, 0)
    try:
        for index, events in decode_all(
            model, tokenizer, backtrack_id, requests, max_rows=max_rows
        ):
            example = examples[index]
            produced = visible_ids(events)
            if final_event(events).finish_reason == "eos":
                produced.append(next(iter(eos)))
            if produced == list(example.response_ids):
                result.correct += 1
                continue
            injection = first_error(produced, example.response_ids, eos, span)
            if injection is None:
                result.unusable += 1
            else:
                result.mined[example] = injection
    finally:
        model.train(was_training)
    return result


@dataclass
class SelfCorrectionInjector(Injector):
    """The synthetic injector, plus mined errors, carry-planted ones and wrong branches.

    A training slot holds one of the mined examples (with its own first wrong token) with
    probability `mined_share`, so mined errors make up that share of every batch however few
    problems were mined; otherwise the synthetic decision stands, and a corrupted example's
    first error becomes a carry error with probability `carry_share` (where the answer takes a
    carry). With `branches`, a slot instead walks a wrong branch to its dead end with
    probability `branch_share` (`training.wrong_branches`), whatever the curriculum's phase."""

    mined: list[tuple[Example, Injection]] = field(default_factory=list)
    mined_share: float = 0.0
    carry: CarryPlanter | None = None
    carry_share: float = 0.0
    branches: WrongBranchPlanter | None = None
    branch_share: float = 0.0

    def choose(self, example: Example) -> tuple[Example, Injection | None]:
        if self.mined and self.rng.random() < self.mined_share:
            example, injection = self.rng.choice(self.mined)
            self.counts["mined"] += 1
            self.counts[len(injection.errors)] += 1
            return example, injection
        if self.branches is not None and self.rng.random() < self.branch_share:
            planted = self.branches.plant(example, self.rng)
            if planted is not None:
                self.counts["wrong_branch"] += 1
                self.counts[len(planted.errors)] += 1
                return example, planted
        return example, self(example)

    def _draw(self, example: Example) -> Injection | None:
        injection = super()._draw(example)
        if injection is None or self.carry is None or self.rng.random() >= self.carry_share:
            return injection
        planted = self.carry.plant(example, self.rng)
        if planted is None:
            return injection
        self.counts["carry"] += 1
        return Injection(planted.split, planted.errors + injection.errors[1:])

    def take_counts(self) -> dict[int, int]:
        counts = {k: v for k, v in self.counts.items() if isinstance(k, int)}
        sources = {k: v for k, v in self.counts.items() if not isinstance(k, int)}
        self.counts.clear()
        if sources:
            logger.info("errors by source since the last log: %s", sources)
        return dict(sorted(counts.items()))


@dataclass
class OnPolicyCallback(TrainerCallback):
    """Re-mines the model's own errors at `steps` and hands them to the injector."""

    injector: SelfCorrectionInjector
    tokenizer: PreTrainedTokenizerBase
    backtrack_id: int
    problems: list[Example]
    steps: list[int]
    temperature: float = 0.0
    history: list[dict] = field(default_factory=list)
    span: int = 1
    """One record per round (step, accuracy on the mined problems, errors mined)."""

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs
    ) -> None:
        if state.global_step not in self.steps or kwargs.get("model") is None:
            return
        rounds = sum(1 for record in self.history if "mined" in record)
        result = mine(
            kwargs["model"],
            self.tokenizer,
            self.backtrack_id,
            self.problems,
            temperature=self.temperature,
            seed=1000 * (rounds + 1),
            span=self.span,
        )
        self.injector.mined = list(result.mined.items())
        record = {
            "step": state.global_step,
            "round": rounds,
            "mined_problems": result.problems,
            "mined_accuracy": round(result.correct / max(1, result.problems), 4),
            "mined": len(result.mined),
            "unusable": result.unusable,
        }
        self.history.append(record)
        logger.info("on-policy round %d: %s", rounds, record)
