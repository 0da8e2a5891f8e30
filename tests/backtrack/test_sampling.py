"""The vectorised backtrack decision and token choice, with hand-made logits and no model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from backtrack.params import GenerationParams
from backtrack.sampling import RowSampling, decide, shape_scores

BT = 3
VOCAB = 12


def row(
    params: GenerationParams,
    context: list[int] | None = None,
    banned=(),
    seed: int = 0,
    barred=(),
    may_backtrack: bool = True,
):
    return RowSampling(
        params,
        torch.Generator().manual_seed(seed),
        context or [],
        frozenset(banned),
        frozenset(barred),
        may_backtrack,
    )


def probs_to_logits(probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor([probs]))


def reference_processors(params: GenerationParams) -> LogitsProcessorList:
    """What `generate()` would apply for these parameters, one request at a time."""
    processors = LogitsProcessorList()
    if params.repetition_penalty not in (None, 1.0):
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.do_sample:
        return processors
    if params.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k is not None:
        processors.append(TopKLogitsWarper(params.top_k))
    if params.top_p is not None and params.top_p < 1.0:
        processors.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        processors.append(MinPLogitsWarper(params.min_p))
    return processors


ROW_PARAMS = st.builds(
    GenerationParams,
    do_sample=st.booleans(),
    temperature=st.floats(0.3, 3.0),
    top_k=st.none() | st.integers(1, VOCAB + 2),
    top_p=st.none() | st.floats(0.05, 1.0),
    min_p=st.none() | st.floats(0.0, 0.9),
    repetition_penalty=st.none() | st.floats(0.5, 2.5),
)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(ROW_PARAMS, st.lists(st.integers(0, VOCAB - 1), max_size=6)),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**16),
)
def test_each_row_is_shaped_exactly_as_transformers_processors_shape_it(rows, seed):
    logits = torch.randn(len(rows), VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    samplings = [row(params, context) for params, context in rows]
    ours = shape_scores(logits, samplings)
    for index, (params, context) in enumerate(rows):
        expected = reference_processors(params)(
            torch.tensor([context], dtype=torch.long), logits[index : index + 1].clone()
        )[0]
        torch.testing.assert_close(ours[index], expected)


def test_argmax_policy_backtracks_only_when_bt_is_the_most_likely_token():
    logits = torch.cat(
        [probs_to_logits([0.1, 0.2, 0.1, 0.6]), probs_to_logits([0.1, 0.5, 0.1, 0.3])]
    )
    choices = decide(logits, [row(GenerationParams()), row(GenerationParams())], BT)
    assert choices.wants_backtrack == [True, False]
    assert choices.tokens == [1, 1]  # the ordinary choice never is BT


def test_threshold_policy_uses_the_untempered_probability():
    logits = probs_to_logits([0.1, 0.5, 0.05, 0.35]).repeat(2, 1)
    hot = {"do_sample": True, "temperature": 5.0, "backtrack_policy": "threshold"}
    rows = [
        row(GenerationParams(**hot, backtrack_threshold=0.3)),
        row(GenerationParams(**hot, backtrack_threshold=0.4)),
    ]
    assert decide(logits, rows, BT).wants_backtrack == [True, False]


def test_never_policy_does_not_backtrack():
    logits = probs_to_logits([0.01, 0.01, 0.01, 0.97])
    choices = decide(logits, [row(GenerationParams(backtrack_policy="never"))], BT)
    assert choices.wants_backtrack == [False]


def test_sample_policy_draws_bt_with_its_probability():
    logits = probs_to_logits([0.25, 0.25, 0.0, 0.5])
    params = GenerationParams(do_sample=True, backtrack_policy="sample")
    generator_row = row(params, seed=1)
    drawn = [decide(logits, [generator_row], BT).wants_backtrack[0] for _ in range(400)]
    assert 0.4 < sum(drawn) / len(drawn) < 0.6


def test_temperature_shapes_the_choice_but_not_the_reported_logprob():
    probs = [0.7, 0.2, 0.1, 1e-9]
    logits = probs_to_logits(probs)
    hot = row(GenerationParams(do_sample=True, temperature=5.0))
    reported: dict[int, float] = {}
    for _ in range(200):
        choices = decide(logits, [hot], BT)
        reported[choices.tokens[0]] = choices.logprobs[0]
    assert set(reported) >= {0, 1, 2}  # a hot temperature reaches the unlikely tokens
    for token, logprob in reported.items():  # each at its untempered probability
        assert logprob == pytest.approx(math.log(probs[token]), abs=1e-5)


def test_top_k_one_is_greedy_even_when_sampling():
    logits = probs_to_logits([0.3, 0.4, 0.2, 0.1])
    sampled = row(GenerationParams(do_sample=True, top_k=1, temperature=3.0))
    assert {decide(logits, [sampled], BT).tokens[0] for _ in range(50)} == {1}


def test_repetition_penalty_moves_greedy_off_a_repeated_token():
    logits = probs_to_logits([0.45, 0.40, 0.1, 0.05])
    penalised = row(GenerationParams(repetition_penalty=2.0), context=[0, 0])
    assert decide(logits, [penalised], BT).tokens == [1]


def test_bans_apply_to_their_row_only():
    logits = probs_to_logits([0.5, 0.3, 0.15, 0.05]).repeat(2, 1)
    choices = decide(logits, [row(GenerationParams(), banned={0}), row(GenerationParams())], BT)
    assert choices.tokens == [1, 0]


def test_a_ban_of_every_ordinary_token_is_not_applied():
    logits = probs_to_logits([0.5, 0.3, 0.15, 0.05])
    choices = decide(logits, [row(GenerationParams(), banned={0, 1, 2})], BT)
    assert choices.tokens == [0]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    neighbours=st.lists(st.tuples(st.booleans(), st.integers(0, 2**16)), max_size=5),
    position=st.integers(0, 5),
)
def test_a_seeded_row_draws_the_same_tokens_whatever_shares_its_batch(seed, neighbours, position):
    """The draw depends on the row's own generator, never on its neighbours or its place."""
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(7))
    params = GenerationParams(do_sample=True, temperature=1.7, seed=seed)
    alone_row = row(params, seed=seed)
    alone = [decide(logits, [alone_row], BT).tokens[0] for _ in range(8)]
    target = row(params, seed=seed)
    others = [
        row(GenerationParams(do_sample=sampled, temperature=1.3), seed=other)
        for sampled, other in neighbours
    ]
    place = min(position, len(others))
    rows = [*others[:place], target, *others[place:]]
    batch_logits = torch.randn(len(rows), VOCAB)
    batch_logits[place] = logits[0]
    batched = [decide(batch_logits, rows, BT).tokens[place] for _ in range(8)]
    assert batched == alone


# -- bars, bans and the deletion budget ----------------------------------------------------------

ORDINARY = [token for token in range(VOCAB) if token != BT]
DECISION_PARAMS = st.builds(
    GenerationParams,
    do_sample=st.booleans(),
    temperature=st.floats(0.3, 3.0),
    top_k=st.none() | st.integers(1, VOCAB),
    repetition_penalty=st.none() | st.floats(0.5, 2.5),
    backtrack_policy=st.sampled_from(["argmax", "threshold", "sample", "never"]),
    backtrack_threshold=st.floats(0.05, 0.95),
)
ROW_CASE = st.tuples(
    DECISION_PARAMS,
    st.frozensets(st.sampled_from(ORDINARY), max_size=VOCAB),  # bans after a rewind
    st.frozensets(st.sampled_from(ORDINARY), max_size=3),  # the request's bars
    st.integers(0, 2**16),  # the row's seed
)


def logits_for(rows: int, seed: int, bt_first_in: set[int] = frozenset()) -> torch.Tensor:
    logits = torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3
    for index in bt_first_in:
        logits[index, BT] = logits[index].max() + 1
    return logits


def with_bt_second(logits: torch.Tensor, first: int) -> torch.Tensor:
    """Make `first` the most likely token and BT the second, ahead of every other one."""
    shaped = logits.clone()
    top = shaped.max(dim=-1, keepdim=True).values
    shaped[:, BT] = top.squeeze(1) + 1
    shaped[:, first] = top.squeeze(1) + 2
    return shaped


@settings(max_examples=200, deadline=None)
@given(cases=st.lists(ROW_CASE, min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_a_bar_never_changes_the_backtrack_decision(cases, seed):
    """The decision is the same with the request's bars as without: a bar feeds BT nothing."""
    logits = logits_for(len(cases), seed)
    free = [row(params, [1, 2], banned, s) for params, banned, _, s in cases]
    barred = [row(params, [1, 2], banned, s, barred=bar) for params, banned, bar, s in cases]
    assert decide(logits, barred, BT).wants_backtrack == decide(logits, free, BT).wants_backtrack


@settings(max_examples=200, deadline=None)
@given(cases=st.lists(ROW_CASE, min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_the_ordinary_token_is_never_bt_nor_barred_and_banned_only_when_nothing_else_is_left(
    cases, seed
):
    logits = logits_for(len(cases), seed)
    rows = [row(params, [1, 2], banned, s, barred=bar) for params, banned, bar, s in cases]
    for token, (_, banned, bar, _) in zip(decide(logits, rows, BT).tokens, cases, strict=True):
        assert token != BT
        assert token not in bar
        if set(ORDINARY) - bar - banned:
            assert token not in banned


@settings(max_examples=200, deadline=None)
@given(
    first=st.sampled_from(ORDINARY),
    banned=st.frozensets(st.sampled_from(ORDINARY), max_size=4),
    policy=st.sampled_from(["argmax", "threshold"]),
    seed=st.integers(0, 2**16),
)
def test_a_barred_first_choice_gives_the_best_allowed_token_never_bt(first, banned, policy, seed):
    """EOS first and BT second (the model after its answer) under ignore_eos: no deletion, the
    best token that is neither barred nor banned is written."""
    banned = banned - {first}
    logits = with_bt_second(logits_for(1, seed), first)
    params = GenerationParams(backtrack_policy=policy, backtrack_threshold=0.9)
    choices = decide(logits, [row(params, banned=banned, barred={first})], BT)
    allowed = [token for token in ORDINARY if token != first and token not in banned]
    assert choices.wants_backtrack == [False]
    assert choices.tokens == [max(allowed, key=lambda token: logits[0, token].item())]


@settings(max_examples=150, deadline=None)
@given(
    cases=st.lists(ROW_CASE, min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    bt_first=st.sets(st.integers(0, 4)),
)
def test_argmax_fires_exactly_where_bt_leads_the_banned_unbarred_distribution(
    cases, seed, bt_first
):
    logits = logits_for(len(cases), seed, {i for i in bt_first if i < len(cases)})
    rows = [
        row(params.model_copy(update={"backtrack_policy": "argmax"}), [1], banned, s, barred=bar)
        for params, banned, bar, s in cases
    ]
    wants = decide(logits, rows, BT).wants_backtrack
    for index, (_, banned, _, _) in enumerate(cases):
        scores = logits[index].clone()
        if set(ORDINARY) - banned:  # a ban of every ordinary token is not applied
            scores[list(banned)] = float("-inf")
        assert wants[index] == (int(scores.argmax()) == BT)


@settings(max_examples=150, deadline=None)
@given(cases=st.lists(ROW_CASE, min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_a_spent_budget_decides_exactly_as_the_never_policy(cases, seed):
    """`may_backtrack=False` (the budget is spent): no BT, and the very tokens `never` draws."""
    logits = logits_for(len(cases), seed, {0})
    spent = [row(p, [1, 2], banned, s, bar, may_backtrack=False) for p, banned, bar, s in cases]
    never = [
        row(p.model_copy(update={"backtrack_policy": "never"}), [1, 2], banned, s, bar)
        for p, banned, bar, s in cases
    ]
    spent_choices, never_choices = decide(logits, spent, BT), decide(logits, never, BT)
    assert spent_choices.wants_backtrack == [False] * len(cases)
    assert spent_choices.tokens == never_choices.tokens
    assert spent_choices.logprobs == never_choices.logprobs


def test_a_ban_still_reaches_the_decision_so_rewinds_go_further_back():
    """The erased token was the only good choice: with it banned, BT leads and fires."""
    logits = probs_to_logits([0.05, 0.6, 0.05, 0.3])
    assert decide(logits, [row(GenerationParams())], BT).wants_backtrack == [False]
    assert decide(logits, [row(GenerationParams(), banned={1})], BT).wants_backtrack == [True]
    barred = row(GenerationParams(), barred={1})
    assert decide(logits, [barred], BT).wants_backtrack == [False]


def test_a_bar_that_would_leave_nothing_is_dropped():
    """A vocabulary of BT and barred tokens only: the request still gets a token, never BT."""
    logits = probs_to_logits([0.1, 0.2, 0.4, 0.3])
    choices = decide(logits, [row(GenerationParams(), barred={0, 1, 2})], BT)
    assert choices.tokens == [2]


@settings(max_examples=100, deadline=None)
@given(
    banned=st.frozensets(st.sampled_from([t for t in ORDINARY if t != 0]), min_size=1),
    threshold=st.floats(0.05, 0.95),
)
def test_bans_do_not_raise_bt_where_eos_leads(banned, threshold):
    """EOS first (token 0 here) and BT a close second, other tokens erased and banned: the
    threshold decision is the one without the bans, so a request made to go on past its answer
    (`ignore_eos`) never deletes what it wrote before, as the same request free to end would not."""
    logits = torch.zeros(1, VOCAB)
    logits[0, 0], logits[0, BT] = 3.0, 2.5
    params = GenerationParams(backtrack_policy="threshold", backtrack_threshold=threshold)
    free = row(params)
    with_bans = RowSampling(
        params, torch.Generator(), [], frozenset(banned), frozenset({0}), ends=frozenset({0})
    )
    assert (
        decide(logits, [with_bans], BT).wants_backtrack
        == decide(logits, [free], BT).wants_backtrack
    )
    if len(banned) == len(ORDINARY) - 1:  # every ordinary token but EOS banned
        without_end = RowSampling(params, torch.Generator(), [], frozenset(banned))
        assert decide(logits, [without_end], BT).wants_backtrack == [
            float(torch.softmax(logits[0, [0, BT]], dim=-1)[1]) > threshold
        ]
