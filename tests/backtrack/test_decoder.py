"""The rewinding decoder's invariants, checked with real forwards of a tiny Llama."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backtrack.decoder import Sequence, generate
from backtrack.events import BacktrackEvent, DoneEvent, TokenEvent, replay
from backtrack.params import GenerationParams
from tests.backtrack.conftest import logit_bias

PROMPTS = st.text(alphabet="0123456789+=abcxyz ", min_size=1, max_size=12)
FIXTURES = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def encode(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id, *tokenizer.encode(text)]


def fresh_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


@FIXTURES
@given(prompt=PROMPTS, max_new_tokens=st.integers(1, 24))
def test_greedy_without_backtracks_matches_hf_generate(
    tiny_model, char_tokenizer, backtrack_id, prompt, max_new_tokens
):
    prompt_ids = encode(char_tokenizer, prompt)
    params = GenerationParams(max_new_tokens=max_new_tokens, backtrack_policy="never")
    events = list(generate(tiny_model, char_tokenizer, backtrack_id, prompt_ids, params))
    ours = [event.id for event in events if isinstance(event, TokenEvent)]
    with torch.no_grad():
        reference = tiny_model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            suppress_tokens=[backtrack_id],
            eos_token_id=char_tokenizer.eos_token_id,
            pad_token_id=char_tokenizer.pad_token_id,
        )[0, len(prompt_ids) :].tolist()
    if reference and reference[-1] == char_tokenizer.eos_token_id:
        reference = reference[:-1]
    assert ours == reference


@FIXTURES
@given(prompt=PROMPTS, actions=st.lists(st.sampled_from(["step", "rewind"]), max_size=20))
def test_rewound_cache_matches_fresh_forward(
    tiny_model, char_tokenizer, backtrack_id, prompt, actions
):
    params = GenerationParams(
        max_new_tokens=64, backtrack_policy="never", max_backtracks=64, max_backtrack_depth=64
    )
    sequence = Sequence(
        tiny_model, char_tokenizer, backtrack_id, encode(char_tokenizer, prompt), params
    )
    for action in actions:
        if sequence.finished:
            break
        if action == "step":
            sequence.step()
        else:
            sequence.backtrack()
    if sequence.finished:
        return
    assert sequence.context_ids == sequence.prompt_ids + sequence.visible_ids
    assert sequence.kv_tokens == len(sequence.context_ids)
    expected = fresh_logits(tiny_model, sequence.context_ids)
    torch.testing.assert_close(sequence.next_logits, expected, atol=1e-4, rtol=1e-4)


@FIXTURES
@given(
    prompt=PROMPTS,
    seed=st.integers(0, 2**16),
    bt_bias=st.floats(0.0, 6.0),
    mode=st.sampled_from(["rewind", "keep"]),
    policy=st.sampled_from(["argmax", "threshold", "sample"]),
    hold_back=st.booleans(),
    stop=st.lists(st.text(alphabet="0123456789ab", min_size=1, max_size=2), max_size=2),
)
def test_replaying_events_gives_the_final_text(
    tiny_model, char_tokenizer, backtrack_id, prompt, seed, bt_bias, mode, policy, hold_back, stop
):
    params = GenerationParams(
        max_new_tokens=16,
        do_sample=True,
        temperature=1.5,
        seed=seed,
        mode=mode,
        backtrack_policy=policy,
        backtrack_threshold=0.2,
        stop=stop,
    )
    with logit_bias(tiny_model, backtrack_id, bt_bias):
        events = list(
            generate(
                tiny_model,
                char_tokenizer,
                backtrack_id,
                encode(char_tokenizer, prompt),
                params,
                hold_back_deletable=hold_back,
            )
        )
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert replay(events) == done.generated_text
    assert not any(s in done.generated_text for s in stop)
    if hold_back:
        assert not any(isinstance(event, BacktrackEvent) for event in events)
    backtracks = [event for event in events if isinstance(event, BacktrackEvent)]
    assert len(backtracks) <= done.backtracks <= params.max_backtracks


def test_always_backtracking_model_spends_its_budget_then_writes_the_whole_answer(
    tiny_model, char_tokenizer, backtrack_id
):
    params = GenerationParams(max_new_tokens=50, max_backtracks=5, ignore_eos=True)
    with logit_bias(tiny_model, backtrack_id, 1e4):
        events = list(
            generate(
                tiny_model, char_tokenizer, backtrack_id, encode(char_tokenizer, "1+1="), params
            )
        )
    done = events[-1]
    assert (done.finish_reason, done.generated_tokens) == ("length", 50)
    assert done.backtracks == 5 and done.backtrack_budget_exhausted
    assert sum(isinstance(event, BacktrackEvent) for event in events) == 5
    assert replay(events) == done.generated_text
    # nothing to delete at the start: those BTs are ignored, never reaching into the prompt
    assert done.ignored_backtracks >= 1


@contextmanager
def bt_second_where_eos_leads(model, eos_id: int, backtrack_id: int) -> Iterator[None]:
    """Wherever EOS is the model's first choice, make BT its close second: what a trained
    model does after its answer (the case where barring EOS used to hand the step to BT)."""

    def shape(_module, _inputs, output):
        output = output.clone()
        leads = output.argmax(dim=-1) == eos_id
        behind = output[..., eos_id] - 0.5
        output[..., backtrack_id] = torch.where(leads, behind, output[..., backtrack_id])
        return output

    handle = model.lm_head.register_forward_hook(shape)
    try:
        yield
    finally:
        handle.remove()


BUDGET_CASE = {
    "prompt": PROMPTS,
    "bt_bias": st.floats(0.0, 8.0),
    "eos_bias": st.floats(0.0, 6.0),
    "policy": st.sampled_from(["argmax", "threshold"]),
    "budget": st.integers(0, 6),
    "max_new_tokens": st.integers(1, 20),
}


@FIXTURES
@example(  # threshold policy: fillers banned one by one once raised BT's share past it
    prompt="1ac40yz7532=", bt_bias=6.0, eos_bias=1.0, policy="threshold", budget=4,
    max_new_tokens=4,
)  # fmt: skip
@given(**BUDGET_CASE)
def test_ignore_eos_gives_exactly_max_new_tokens_and_keeps_the_text_written_before_eos(
    tiny_model,
    char_tokenizer,
    backtrack_id,
    prompt,
    bt_bias,
    eos_bias,
    policy,
    budget,
    max_new_tokens,
):
    eos = char_tokenizer.eos_token_id
    prompt_ids = encode(char_tokenizer, prompt)

    def done_of(**extra) -> DoneEvent:
        params = GenerationParams(
            max_new_tokens=max_new_tokens, backtrack_policy=policy, max_backtracks=budget, **extra
        )
        events = list(generate(tiny_model, char_tokenizer, backtrack_id, prompt_ids, params))
        assert replay(events) == events[-1].generated_text
        return events[-1]

    with (
        logit_bias(tiny_model, backtrack_id, bt_bias),
        logit_bias(tiny_model, eos, eos_bias),
        bt_second_where_eos_leads(tiny_model, eos, backtrack_id),
    ):
        free, exact = done_of(), done_of(ignore_eos=True)
        at_least = done_of(min_tokens=max_new_tokens // 2)
    assert (exact.finish_reason, exact.generated_tokens) == ("length", max_new_tokens)
    if free.finish_reason == "eos":
        # EOS led where the free run ended, so no BT fires there: its text stands
        assert exact.generated_text.startswith(free.generated_text)
    assert at_least.generated_tokens >= max_new_tokens // 2
    assert at_least.finish_reason in {"eos", "length"}


@FIXTURES
@given(
    **BUDGET_CASE,
    seed=st.integers(0, 2**16),
    do_sample=st.booleans(),
    mode=st.sampled_from(["rewind", "keep"]),
    depth=st.integers(1, 4),
    ignore_eos=st.booleans(),
    stop=st.lists(st.text(alphabet="0123456789ab", min_size=1, max_size=2), max_size=2),
)
def test_any_deletion_budget_ends_with_a_whole_answer_never_for_the_budget(
    tiny_model,
    char_tokenizer,
    backtrack_id,
    prompt,
    bt_bias,
    eos_bias,
    policy,
    budget,
    max_new_tokens,
    seed,
    do_sample,
    mode,
    depth,
    ignore_eos,
    stop,
):
    params = GenerationParams(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=1.5,
        seed=seed,
        mode=mode,
        backtrack_policy=policy,
        max_backtracks=budget,
        max_backtrack_depth=depth,
        ignore_eos=ignore_eos,
        stop=stop,
    )
    with (
        logit_bias(tiny_model, backtrack_id, bt_bias),
        logit_bias(tiny_model, char_tokenizer.eos_token_id, eos_bias),
    ):
        events = list(
            generate(
                tiny_model, char_tokenizer, backtrack_id, encode(char_tokenizer, prompt), params
            )
        )
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert done.finish_reason in {"eos", "stop", "length"}
    deletions = sum(isinstance(event, BacktrackEvent) for event in events)
    assert deletions == done.backtracks <= budget
    assert done.backtrack_budget_exhausted == (0 < budget == done.backtracks)
    assert replay(events) == done.generated_text
    if ignore_eos and done.finish_reason != "stop":
        assert (done.finish_reason, done.generated_tokens) == ("length", max_new_tokens)


def test_a_bt_beyond_the_depth_writes_the_best_ordinary_token_instead_of_stalling(
    tiny_model, char_tokenizer, backtrack_id
):
    """BT always leads, but with depth 1 a token may go only from the furthest position: a BT
    with nothing it may delete is ignored and the best ordinary token written, so the row never
    stalls (a stalled row would take the same decision on the same logits forever)."""
    params = GenerationParams(
        max_new_tokens=6, max_backtracks=100, max_backtrack_depth=1, ignore_eos=True
    )
    with logit_bias(tiny_model, backtrack_id, 1e4):
        events = list(
            generate(tiny_model, char_tokenizer, backtrack_id, encode(char_tokenizer, "7"), params)
        )
    done = events[-1]
    assert (done.finish_reason, done.generated_tokens) == ("length", 6)
    assert done.ignored_backtracks > 0
    assert done.sampled_tokens == done.generated_tokens + done.backtracks
    assert replay(events) == done.generated_text


def test_greedy_after_rewind_never_reemits_the_banned_token(
    tiny_model, char_tokenizer, backtrack_id
):
    params = GenerationParams(
        max_new_tokens=30, max_backtracks=30, max_backtrack_depth=30, backtrack_policy="never"
    )
    prompt_ids = encode(char_tokenizer, "12+")
    banned: list[int] = []
    with logit_bias(tiny_model, char_tokenizer.eos_token_id, -1e4):
        sequence = Sequence(tiny_model, char_tokenizer, backtrack_id, prompt_ids, params)
        for _ in range(6):
            sequence.step()
            assert len(sequence.visible_ids) == 1
            assert sequence.visible_ids[0] not in banned
            banned.append(sequence.visible_ids[0])
            assert sequence.backtrack() is not None
    assert len(set(banned)) == 6
    assert sequence.bans[0] == set(banned)


def test_keep_mode_leaves_bt_and_the_deleted_token_in_context(
    tiny_model, char_tokenizer, backtrack_id
):
    params = GenerationParams(max_new_tokens=10, mode="keep", backtrack_policy="never")
    prompt_ids = encode(char_tokenizer, "7+8=")
    sequence = Sequence(tiny_model, char_tokenizer, backtrack_id, prompt_ids, params)
    sequence.step()
    first = sequence.visible_ids[0]
    events = sequence.backtrack()
    assert events and isinstance(events[0], BacktrackEvent)
    assert sequence.visible_ids == []
    assert sequence.context_ids == [*prompt_ids, first, backtrack_id]
    expected = fresh_logits(tiny_model, sequence.context_ids)
    torch.testing.assert_close(sequence.next_logits, expected, atol=1e-4, rtol=1e-4)


def test_deletions_never_reach_further_than_the_depth_limit(
    tiny_model, char_tokenizer, backtrack_id
):
    params = GenerationParams(
        max_new_tokens=20, max_backtracks=20, max_backtrack_depth=2, backtrack_policy="never"
    )
    prompt_ids = encode(char_tokenizer, "9")
    with logit_bias(tiny_model, char_tokenizer.eos_token_id, -1e4):
        sequence = Sequence(tiny_model, char_tokenizer, backtrack_id, prompt_ids, params)
        for _ in range(5):
            sequence.step()
        assert len(sequence.visible_ids) == 5
        assert sequence.backtrack() is not None
        assert sequence.backtrack() is not None
        assert sequence.backtrack() is None  # would reach 3 behind the furthest point
    assert len(sequence.visible_ids) == 3
    assert sequence.counters.ignored_backtracks == 1


def test_bt_with_nothing_to_delete_is_ignored_and_reported(
    tiny_model, char_tokenizer, backtrack_id
):
    prompt_ids = encode(char_tokenizer, "5")
    sequence = Sequence(tiny_model, char_tokenizer, backtrack_id, prompt_ids, GenerationParams())
    assert sequence.backtrack() is None
    assert sequence.context_ids == prompt_ids  # the prompt is never touched
    assert sequence.counters.ignored_backtracks == 1
    assert sequence.cancel("cancelled")[-1].ignored_backtracks == 1


def test_stop_sequence_is_matched_on_visible_text_and_never_shown(
    tiny_model, char_tokenizer, backtrack_id
):
    prompt_ids = encode(char_tokenizer, "3+4=")
    free = list(
        generate(
            tiny_model,
            char_tokenizer,
            backtrack_id,
            prompt_ids,
            GenerationParams(max_new_tokens=12, backtrack_policy="never"),
        )
    )[-1].generated_text
    stop = free[4:6]
    events = list(
        generate(
            tiny_model,
            char_tokenizer,
            backtrack_id,
            prompt_ids,
            GenerationParams(max_new_tokens=12, backtrack_policy="never", stop=[stop]),
        )
    )
    done = events[-1]
    assert done.finish_reason == "stop"
    assert done.generated_text == free[: free.index(stop)]
    assert replay(events) == done.generated_text


def test_same_seed_same_sample_and_different_seed_differs(tiny_model, char_tokenizer, backtrack_id):
    def run(seed: int) -> str:
        params = GenerationParams(max_new_tokens=24, do_sample=True, temperature=2.0, seed=seed)
        prompt_ids = encode(char_tokenizer, "ab")
        return list(generate(tiny_model, char_tokenizer, backtrack_id, prompt_ids, params))[
            -1
        ].generated_text

    assert run(1) == run(1)
    assert len({run(seed) for seed in range(4)}) > 1


def test_cancel_ends_with_the_reason_and_frees_the_cache(tiny_model, char_tokenizer, backtrack_id):
    sequence = Sequence(
        tiny_model, char_tokenizer, backtrack_id, encode(char_tokenizer, "1"), GenerationParams()
    )
    sequence.step()
    events = sequence.cancel("cancelled")
    assert isinstance(events[-1], DoneEvent)
    assert events[-1].finish_reason == "cancelled"
    assert sequence.kv_tokens == 0
    assert sequence.step() == []


def test_keep_mode_stops_when_the_context_is_full(tiny_model, char_tokenizer, backtrack_id):
    params = GenerationParams(max_new_tokens=10, mode="keep", backtrack_policy="never")
    prompt_ids = encode(char_tokenizer, "7+8=")
    sequence = Sequence(tiny_model, char_tokenizer, backtrack_id, prompt_ids, params)
    sequence.row.max_context = len(prompt_ids) + 1
    sequence.force_token(char_tokenizer.convert_tokens_to_ids("1"))
    events = sequence.backtrack()
    assert events is not None and events[-1].finish_reason == "length"
    assert sequence.counters.backtracks == 0
