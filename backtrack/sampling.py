"""Choosing the next token: the backtrack decision, then the choice among ordinary tokens.

The two are separate on purpose. Temperature flattens the distribution, so a BT drawn at
temperature fires on correct tokens; deciding "backtrack or not" on the *untempered*
distribution (argmax or a probability threshold) keeps bans safe. Temperature, top-k, top-p,
min-p and repetition penalty (transformers' own logits processors) then shape only the choice
among ordinary tokens. Everything here is a pure function of tensors: testable with no model.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from backtrack.params import GenerationParams

NEG_INF = float("-inf")


def build_processors(params: GenerationParams) -> LogitsProcessorList:
    """The transformers processors a request asks for, in `generate()`'s order."""
    processors = LogitsProcessorList()
    if params.repetition_penalty is not None and params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.do_sample:
        return processors
    if params.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k is not None:
        processors.append(TopKLogitsWarper(params.top_k))
    if params.top_p is not None and params.top_p < 1.0:
        processors.append(TopPLogitsWarper(params.top_p))
    if params.min_p is not None and params.min_p > 0:
        processors.append(MinPLogitsWarper(params.min_p))
    return processors


def mask_tokens(logits: torch.Tensor, token_ids: set[int] | list[int]) -> torch.Tensor:
    """A copy of `logits` with `token_ids` set to -inf (no-op copy when there are none)."""
    masked = logits.clone()
    if token_ids:
        masked[list(token_ids)] = NEG_INF
    return masked


def wants_backtrack(logits: torch.Tensor, backtrack_id: int, policy: str, threshold: float) -> bool:
    """The backtrack decision on the untempered distribution (`sample` is decided in `choose`)."""
    if policy == "argmax":
        return int(torch.argmax(logits)) == backtrack_id
    if policy == "threshold":
        return float(torch.softmax(logits.float(), dim=-1)[backtrack_id]) > threshold
    return False


def choose(
    logits: torch.Tensor,
    context_ids: torch.Tensor,
    processors: LogitsProcessorList,
    do_sample: bool,
    generator: torch.Generator | None,
) -> tuple[int, float]:
    """Pick one token from 1-D `logits` after the processors; return it and its logprob.

    The logprob is taken under the untempered distribution, so it means the same at every
    temperature. `context_ids` (1-D) feeds the repetition penalty.
    """
    scores = processors(context_ids.unsqueeze(0), logits.unsqueeze(0).float())[0]
    if do_sample:
        probs = torch.softmax(scores, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=generator))
    else:
        token = int(torch.argmax(scores))
    logprob = float(torch.log_softmax(logits.float(), dim=-1)[token])
    return token, logprob
