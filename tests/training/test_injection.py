"""Error injection and the two objectives' layouts, as properties over arbitrary examples."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from backtrack.events import BacktrackEvent, TokenEvent, replay
from training.collator import BacktrackCollator
from training.data import Example
from training.errors import ErrorPlan, Injection, Injector, build_source
from training.objectives import IGNORE, layout

BT, PAD, EOS = 99, 0, 2
SPECIAL = [PAD, 1, EOS, 3, BT]

tokens = st.integers(min_value=4, max_value=40)
examples = st.builds(
    lambda prompt, answer: Example(tuple(prompt), (*answer, EOS)),
    st.lists(tokens, min_size=1, max_size=6),
    st.lists(tokens, min_size=0, max_size=8),
)


@st.composite
def corrupted(draw):
    example = draw(examples)
    split = draw(st.integers(0, len(example.response_ids) - 1))
    errors = draw(st.lists(tokens, min_size=1, max_size=5))
    return example, Injection(split, tuple(errors))


def predicted(targets: list[int]) -> list[int]:
    return [target for target in targets if target != IGNORE]


@given(corrupted(), st.sampled_from(["masked", "rewind"]))
def test_nothing_ever_learns_to_produce_an_error_token(case, objective):
    """What the model is taught to emit is the response plus k BTs, never an error token.

    In sequence order: under `masked` the BTs come where the errors stood; under `rewind` the last
    prefix position (before the errors) already predicts the correct token, then each error
    position predicts BT.
    """
    example, injection = case
    response, split = list(example.response_ids), injection.split
    bts = [BT] * len(injection.errors)
    if objective == "masked":
        expected = response[:split] + bts + response[split:]
    else:
        expected = response[: split + 1] + bts + response[split + 1 :]
    assert predicted(layout(example, injection, objective, BT).targets) == expected


@given(corrupted())
def test_under_masked_k_backtracks_delete_exactly_the_k_errors(case):
    example, injection = case
    item = layout(example, injection, "masked", BT)
    visible: list[int] = []
    for token in item.input_ids[len(example.prompt_ids) :]:
        if token == BT:
            visible.pop()
        else:
            visible.append(token)
    assert visible == list(example.response_ids)


@given(corrupted())
def test_under_rewind_the_continuation_takes_the_positions_of_the_clean_sequence(case):
    example, injection = case
    item = layout(example, injection, "rewind", BT)
    start, end = item.hidden
    kept = item.position_ids[:start] + item.position_ids[end:]
    assert kept == list(range(len(example.prompt_ids) + len(example.response_ids)))
    assert item.input_ids[start:end] == list(injection.errors)


def test_the_event_stream_of_a_masked_example_replays_to_the_response():
    """The same edit semantics the server streams: token appends, backtrack pops."""
    example = Example((5, 6), (7, 8, EOS))
    item = layout(example, Injection(1, (30, 31)), "masked", BT)
    events, shown = [], []
    for token in item.input_ids[2:]:
        if token == BT:
            events.append(BacktrackEvent(len(shown) - 1, shown.pop(), "", 1))
        else:
            events.append(TokenEvent(len(shown), token, chr(token + 40), 0.0))
            shown.append(token)
    assert replay(events) == "".join(chr(t + 40) for t in (7, 8, EOS))


@given(st.floats(0.0, 1.0), st.integers(1, 5), st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_the_clean_share_and_error_counts_follow_the_plan(share, max_errors, seed):
    data = [Example((5,), (6, 7, 8, EOS))] * 1500
    source = build_source("in_distribution", data, 100, SPECIAL)
    injector = Injector(source, ErrorPlan(max_errors, share), seed=seed)
    drawn = [injector(example) for example in data]
    clean = sum(injection is None for injection in drawn) / len(drawn)
    assert abs(clean - (1 - share)) < 0.06
    assert all(1 <= len(i.errors) <= max_errors for i in drawn if i is not None)
    assert sum(injector.take_counts().values()) == len(data)


@given(examples, st.integers(0, 2**16))
def test_the_first_error_is_never_the_correct_token(example, seed):
    source = build_source("in_distribution", [example, Example((5,), (6, 7, EOS))], 100, SPECIAL)
    injector = Injector(source, ErrorPlan(3, 1.0), seed=seed)
    injection = injector(example)
    assert injection is not None
    assert injection.errors[0] != example.response_ids[injection.split]


def test_error_sources_draw_only_ordinary_tokens():
    data = [Example((5,), (6, 7, EOS)), Example((5,), (7, 7, 8, EOS))]
    rng = random.Random(0)
    plausible = build_source("in_distribution", data, 100, SPECIAL)
    assert set(plausible.draw(rng, 500)) == {6, 7, 8}
    anything = build_source("random", data, 100, SPECIAL)
    drawn = set(anything.draw(rng, 3000))
    assert not drawn & set(SPECIAL)
    assert len(drawn) > 80


def test_evaluation_batches_stay_clean():
    """Without an injector the collator never corrupts, whatever the training plan says."""
    data = [Example((5, 6), (7, 8, EOS))] * 20
    clean = BacktrackCollator(BT, PAD, "rewind", injector=None)(data)
    assert not (clean["shift_labels"] == BT).any()
    source = build_source("in_distribution", data, 100, SPECIAL)
    noisy = BacktrackCollator(BT, PAD, "rewind", Injector(source, ErrorPlan(2, 1.0)))(data)
    assert (noisy["shift_labels"] == BT).any()


def test_the_mixed_source_draws_wrong_digits_and_tokens_no_answer_holds():
    """Half the draws uniform over the vocabulary, half from the answers' own tokens."""
    data = [Example((5,), (10, 11, 12, EOS)), Example((6,), (10, 12, EOS))]
    source = build_source("mixed", data, vocab_size=41, special_ids=SPECIAL, random_share=0.5)
    draws = source.draw(random.Random(0), 4000)
    in_answers = sum(token in (10, 11, 12) for token in draws) / len(draws)
    # 0.5 from the answers' unigram, plus the uniform half's 3 of 36 ordinary tokens
    assert abs(in_answers - (0.5 + 0.5 * 3 / 36)) < 0.03
    assert not set(draws) & set(SPECIAL)
    assert len(set(draws)) > 30  # the uniform half reaches tokens no answer holds
