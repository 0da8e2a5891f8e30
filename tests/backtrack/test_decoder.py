"""The rewinding decoder's invariants, checked with real forwards of a tiny Llama."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
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


def test_always_backtracking_model_terminates_with_max_backtracks(
    tiny_model, char_tokenizer, backtrack_id
):
    params = GenerationParams(max_new_tokens=50, max_backtracks=5)
    with logit_bias(tiny_model, backtrack_id, 1e4):
        events = list(
            generate(
                tiny_model, char_tokenizer, backtrack_id, encode(char_tokenizer, "1+1="), params
            )
        )
    done = events[-1]
    assert done.finish_reason == "max_backtracks"
    assert done.backtracks == 5
    assert sum(isinstance(event, BacktrackEvent) for event in events) == 5
    # nothing to delete at the start: those BTs are ignored, never reaching into the prompt
    assert done.ignored_backtracks >= 1


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
