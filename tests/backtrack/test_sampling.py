"""The backtrack decision and token choice, with hand-made logits and no model."""

from __future__ import annotations

import pytest
import torch

from backtrack.params import GenerationParams
from backtrack.sampling import build_processors, choose, mask_tokens, wants_backtrack

BT = 3


def logits_with(bt_prob_rank: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(bt_prob_rank))


def test_argmax_policy_backtracks_only_when_bt_is_the_most_likely_token():
    assert wants_backtrack(logits_with([0.1, 0.2, 0.1, 0.6]), BT, "argmax", 0.3)
    assert not wants_backtrack(logits_with([0.1, 0.5, 0.1, 0.3]), BT, "argmax", 0.3)


def test_threshold_policy_uses_the_untempered_probability():
    logits = logits_with([0.1, 0.5, 0.05, 0.35])
    assert wants_backtrack(logits, BT, "threshold", 0.3)
    assert not wants_backtrack(logits, BT, "threshold", 0.4)


def test_sample_and_never_policies_do_not_decide_here():
    logits = logits_with([0.01, 0.01, 0.01, 0.97])
    assert not wants_backtrack(logits, BT, "sample", 0.3)
    assert not wants_backtrack(logits, BT, "never", 0.3)


def test_temperature_shapes_the_choice_but_not_the_reported_logprob():
    logits = logits_with([0.7, 0.2, 0.1, 1e-9])
    processors = build_processors(GenerationParams(do_sample=True, temperature=5.0))
    generator = torch.Generator().manual_seed(0)
    drawn = {choose(logits, torch.tensor([0]), processors, True, generator)[0] for _ in range(200)}
    assert drawn >= {0, 1, 2}  # a hot temperature reaches the unlikely tokens
    token, logprob = choose(
        logits, torch.tensor([0]), build_processors(GenerationParams()), False, None
    )
    assert token == 0
    assert logprob == pytest.approx(float(torch.log(torch.tensor(0.7))), abs=1e-5)


def test_top_k_one_is_greedy_even_when_sampling():
    logits = logits_with([0.3, 0.4, 0.2, 0.1])
    processors = build_processors(GenerationParams(do_sample=True, top_k=1, temperature=3.0))
    generator = torch.Generator().manual_seed(0)
    assert {
        choose(logits, torch.tensor([0]), processors, True, generator)[0] for _ in range(50)
    } == {1}


def test_repetition_penalty_moves_greedy_off_a_repeated_token():
    logits = logits_with([0.45, 0.40, 0.1, 0.05])
    processors = build_processors(GenerationParams(repetition_penalty=2.0))
    assert choose(logits, torch.tensor([0, 0]), processors, False, None)[0] == 1


def test_mask_tokens_does_not_touch_its_input():
    logits = torch.zeros(4)
    masked = mask_tokens(logits, {1, 2})
    assert torch.isinf(masked[[1, 2]]).all()
    assert not torch.isinf(logits).any()
