"""Continuous batching: rows that join, leave and rewind inside one batch decode exactly as alone.

Real forwards of a tiny Llama. Each plan is a request with its own prompt length, parameters,
join step, forced rewinds (1-3 tokens erased after a given decision) and possibly a cancel; it is
decoded once alone and once in a batch with the others, and both must agree token for token.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import MistralConfig, MistralForCausalLM

from backtrack.batch import BatchDecoder, StepReport, decode_all, final_event
from backtrack.checkpoint import LoadedCheckpoint, load_checkpoint
from backtrack.compiled import CompiledStep
from backtrack.events import BacktrackEvent, DoneEvent, Event, TokenEvent, replay
from backtrack.kv import PaddedKV, UnsupportedModel
from backtrack.params import GenerationParams
from backtrack.row import Row
from tests.backtrack.conftest import logit_bias
from tests.server.conftest import EOS_FIRST_PROMPT, SCRIPT, save_scripted_checkpoint

FIXTURES = settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Plan:
    prompt: list[int]
    params: GenerationParams
    join_at: int
    rewinds: dict[int, int] = field(default_factory=dict)
    """After the row's n-th decision, erase this many tokens (one per following step)."""
    cancel_after: int | None = None


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    row: Row | None = None
    applied: set[int] = field(default_factory=set)

    @property
    def done(self) -> DoneEvent:
        return final_event(self.events)


def comparable(events: list[Event]) -> list:
    """Events without logprobs (compared apart: a padded batch reorders float sums, ~1e-6)."""
    return [replace(e, logprob=0.0) if isinstance(e, TokenEvent) else e for e in events]


def logprobs(events: list[Event]) -> list[float]:
    return [event.logprob for event in events if isinstance(event, TokenEvent)]


def assert_same_decoding(expected: list[Outcome], actual: list[Outcome]) -> None:
    """The same events token for token, and log-probabilities within float noise."""
    for one, other in zip(expected, actual, strict=True):
        assert comparable(other.events) == comparable(one.events)
        assert logprobs(other.events) == pytest.approx(logprobs(one.events), abs=1e-4)


def fresh_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def act_between_steps(decoder: BatchDecoder, outcome: Outcome, plan: Plan) -> None:
    """Queue the plan's forced rewinds (one per step, as BT decisions) and apply its cancel."""
    row = outcome.row
    assert row is not None
    if row.finished:
        return
    count = row.decisions
    if count in plan.rewinds and count not in outcome.applied:
        outcome.applied.add(count)
        row.forced.extend([row.backtrack_id] * plan.rewinds[count])
    if plan.cancel_after is not None and count >= plan.cancel_after:
        outcome.events.extend(decoder.cancel(row, "cancelled"))


def run(
    model,
    tokenizer,
    backtrack_id,
    plans: list[Plan],
    chunk: int,
    check=None,
    layout: str = "slots",
    compiled: bool = False,
) -> list[Outcome]:
    """Decode the plans in one batch decoder; `check(decoder)` runs before every decision."""
    decoder = BatchDecoder(
        model, tokenizer, backtrack_id, prefill_chunk_tokens=chunk, kv_layout=layout
    )
    if compiled:
        CompiledStep(decoder.kv)
    outcomes = [Outcome() for _ in plans]
    step = 0
    while step < 10_000:
        for plan, outcome in zip(plans, outcomes, strict=True):
            if plan.join_at == step:
                outcome.row = decoder.add(plan.prompt, plan.params)
        if not decoder.rows and all(plan.join_at <= step for plan in plans):
            break
        decoder.forward()
        decoder.prefill(budget=chunk if decoder.kv.rows else None)
        if check is not None:
            check(decoder)
        report = StepReport()
        decoder.decide(report)
        for outcome in outcomes:
            if outcome.row is not None:
                outcome.events.extend(report.events.get(outcome.row, []))
        for plan, outcome in zip(plans, outcomes, strict=True):
            if outcome.row is not None:
                act_between_steps(decoder, outcome, plan)
        step += 1
    return outcomes


def visible_logits_are_fresh(model):
    def check(decoder: BatchDecoder) -> None:
        for row in decoder.rows:
            if row.ready:
                expected = fresh_logits(model, row.context_ids)
                # a batched forward sums in another order than a fresh one: float32 noise of
                # ~1e-4 on these large-weight models; a wrong KV entry moves logits by ~1
                torch.testing.assert_close(row.next_logits, expected, atol=1e-3, rtol=1e-3)
                if row.params.mode == "rewind":
                    assert row.context_ids == row.prompt_ids + row.visible_ids

    return check


PLAN = st.builds(
    Plan,
    prompt=st.lists(st.integers(4, 40), min_size=1, max_size=14).map(lambda ids: [1, *ids]),
    params=st.builds(
        GenerationParams,
        max_new_tokens=st.integers(1, 14),
        backtrack_policy=st.just("never"),
        mode=st.sampled_from(["rewind", "rewind", "keep"]),
        max_backtracks=st.just(12),
        max_backtrack_depth=st.just(6),
    ),
    join_at=st.integers(0, 8),
    rewinds=st.dictionaries(st.integers(1, 10), st.integers(1, 3), max_size=3),
    cancel_after=st.none() | st.integers(1, 12),
)


@pytest.mark.parametrize("layout", ["slots", "padded"])
@FIXTURES
@given(plans=st.lists(PLAN, min_size=2, max_size=8), chunk=st.integers(1, 8))
def test_batched_greedy_equals_each_request_alone_and_logits_stay_fresh(
    tiny_model, char_tokenizer, backtrack_id, plans, chunk, layout
):
    alone = [
        run(tiny_model, char_tokenizer, backtrack_id, [plan], chunk, layout=layout)[0]
        for plan in plans
    ]
    batched = run(
        tiny_model,
        char_tokenizer,
        backtrack_id,
        plans,
        chunk,
        visible_logits_are_fresh(tiny_model),
        layout=layout,
    )
    assert_same_decoding(alone, batched)
    for together in batched:
        assert replay(together.events) == together.done.generated_text


def decode_in_one_batch(
    model,
    tokenizer,
    backtrack_id: int,
    requests: list[tuple[list[int], GenerationParams]],
    layout: str,
) -> list[DoneEvent]:
    """Every request in one batch decoder with `layout`, stepped to the end; their done events."""
    decoder = BatchDecoder(model, tokenizer, backtrack_id, kv_layout=layout)
    rows = [decoder.add(prompt, params) for prompt, params in requests]
    events: dict[Row, list[Event]] = {row: [] for row in rows}
    while decoder.rows:
        for row, row_events in decoder.step().events.items():
            events[row].extend(row_events)
    for row_events in events.values():
        assert replay(row_events) == final_event(row_events).generated_text
    return [final_event(events[row]) for row in rows]


@pytest.mark.parametrize("layout", ["slots", "padded"])
@FIXTURES
@given(
    seeds=st.lists(st.integers(0, 2**20), min_size=1, max_size=6),
    policy=st.sampled_from(["argmax", "threshold", "sample"]),
    bias=st.floats(0.0, 4.0),
)
def test_a_seeded_request_gives_the_same_text_alone_and_in_any_batch(
    tiny_model, char_tokenizer, backtrack_id, seeds, policy, bias, layout
):
    def params(seed: int) -> GenerationParams:
        return GenerationParams(
            max_new_tokens=12,
            do_sample=True,
            temperature=1.6,
            top_k=20,
            seed=seed,
            backtrack_policy=policy,
            backtrack_threshold=0.2,
            max_backtracks=seed % 4,  # budgets that run out, alone and in the batch alike
        )

    prompts = [[1, *range(5, 5 + 2 * index + 1)] for index in range(len(seeds))]
    requests = [(prompt, params(seed)) for prompt, seed in zip(prompts, seeds, strict=True)]
    model = (tiny_model, char_tokenizer, backtrack_id)
    with logit_bias(tiny_model, backtrack_id, bias):
        alone = [decode_in_one_batch(*model, [request], layout)[0] for request in requests]
        together = decode_in_one_batch(*model, requests, layout)
    for done, batched in zip(alone, together, strict=True):
        assert batched.generated_text == done.generated_text
        assert batched.removed_tokens == done.removed_tokens
        assert batched.backtrack_budget_exhausted == done.backtrack_budget_exhausted
        assert batched.finish_reason in {"eos", "length"}


def test_a_backtrack_inside_a_batch_costs_no_extra_forward(
    tiny_model, char_tokenizer, backtrack_id
):
    params = GenerationParams(max_new_tokens=20, backtrack_policy="never", max_backtracks=8)
    decoder = BatchDecoder(tiny_model, char_tokenizer, backtrack_id)
    rows = [decoder.add([1, 5 + index, 6], params) for index in range(4)]
    decoder.step()  # prefill and first decisions
    decoder.step()
    rows[1].backtrack()
    rows[3].backtrack()
    report = decoder.step()
    assert report.forwards == 1
    assert report.decode_rows == 4
    assert report.rewound_rows == 2


def test_cancelling_a_row_frees_its_kv_at_once_and_leaves_the_others_alone(
    tiny_model, char_tokenizer, backtrack_id
):
    params = GenerationParams(max_new_tokens=30, backtrack_policy="never", ignore_eos=True)
    prompts = [[1, 7, 8, 9], [1, 10], [1, 11, 12]]
    alone = [
        final_event(next(decode_all(tiny_model, char_tokenizer, backtrack_id, [(p, params)]))[1])
        for p in prompts[::2]
    ]
    decoder = BatchDecoder(tiny_model, char_tokenizer, backtrack_id)
    rows = [decoder.add(prompt, params) for prompt in prompts]
    events: dict[Row, list[Event]] = {row: [] for row in rows}
    for _ in range(5):
        for row, row_events in decoder.step().events.items():
            events[row].extend(row_events)
    held = decoder.kv.tokens_held()
    victim_holds = rows[1].cached
    decoder.cancel(rows[1], "cancelled")
    assert decoder.kv.tokens_held() == held - victim_holds
    assert decoder.kv.rows == 2
    while decoder.rows:
        for row, row_events in decoder.step().events.items():
            events[row].extend(row_events)
    assert [final_event(events[row]) for row in rows[::2]] == alone


def test_ignore_eos_and_min_tokens_keep_eos_from_ending_the_request(
    tiny_model, char_tokenizer, backtrack_id
):
    eos = char_tokenizer.eos_token_id
    with logit_bias(tiny_model, eos, 50.0):
        plain = GenerationParams(max_new_tokens=9, backtrack_policy="never")
        requests = [
            ([1, 5], plain),
            ([1, 5], GenerationParams(max_new_tokens=9, backtrack_policy="never", ignore_eos=True)),
            ([1, 5], GenerationParams(max_new_tokens=9, backtrack_policy="never", min_tokens=4)),
        ]
        done = {
            index: final_event(events)
            for index, events in decode_all(tiny_model, char_tokenizer, backtrack_id, requests)
        }
    assert (done[0].finish_reason, done[0].generated_tokens) == ("eos", 0)
    assert (done[1].finish_reason, done[1].generated_tokens) == ("length", 9)
    assert (done[2].finish_reason, done[2].generated_tokens) == ("eos", 4)


def test_holes_left_by_rewinds_are_compacted_and_decoding_stays_exact(
    tiny_model, char_tokenizer, backtrack_id
):
    params = GenerationParams(
        max_new_tokens=40, backtrack_policy="never", max_backtracks=100, ignore_eos=True
    )
    decoder = BatchDecoder(
        tiny_model, char_tokenizer, backtrack_id, compact_slack=4, kv_layout="padded"
    )
    steady, rewinding = decoder.add([1, 5, 6], params), decoder.add([1, 7], params)
    for step in range(30):
        decoder.step()
        if step % 2 and not rewinding.finished:
            rewinding.backtrack()
    assert decoder.kv.slots - max(steady.cached, rewinding.cached) < 4 + 2
    decoder.forward()
    for row in (steady, rewinding):
        torch.testing.assert_close(
            row.next_logits, fresh_logits(tiny_model, row.context_ids), atol=1e-4, rtol=1e-4
        )


def test_a_ban_holds_only_for_the_prefix_it_was_made_under(
    tiny_model, char_tokenizer, backtrack_id
):
    """Write a b c, delete c (banned at 2), delete b: the ban at 2 no longer applies."""
    params = GenerationParams(max_new_tokens=10, backtrack_policy="never", ignore_eos=True)
    decoder = BatchDecoder(tiny_model, char_tokenizer, backtrack_id)
    row = decoder.add([1, 5], params)
    decoder.prefill()
    for _ in range(3):
        decoder.decide()
        decoder.forward()
    third = row.visible_ids[2]
    row.backtrack()
    assert row.bans == {2: {third}}
    decoder.forward()
    row.backtrack()
    assert 2 not in row.bans
    assert row.bans[1] == {row.counters.removed[-1]["id"]}


def test_sliding_window_models_are_refused_with_a_clear_message(char_tokenizer):
    config = MistralConfig(
        vocab_size=len(char_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_window=8,
    )
    with pytest.raises(UnsupportedModel, match="sliding-window"):
        PaddedKV(MistralForCausalLM(config))


def test_events_of_every_row_replay_to_its_text(tiny_model, char_tokenizer, backtrack_id):
    requests = [
        ([1, *range(5, 5 + n)], GenerationParams(max_new_tokens=10, do_sample=True, seed=n))
        for n in range(1, 7)
    ]
    with logit_bias(tiny_model, backtrack_id, 2.5):
        results = dict(decode_all(tiny_model, char_tokenizer, backtrack_id, requests, max_rows=3))
    assert sorted(results) == list(range(6))
    assert any(isinstance(e, BacktrackEvent) for events in results.values() for e in events)
    for events in results.values():
        assert replay(events) == final_event(events).generated_text
        assert all(isinstance(e, TokenEvent | BacktrackEvent) for e in events[:-1])


def test_the_last_token_is_reviewed_before_a_length_limit_ends_the_request(
    tiny_model, char_tokenizer, backtrack_id
):
    """At max_new_tokens the model still decides once more: a BT there deletes the last token."""
    params = GenerationParams(max_new_tokens=3, ignore_eos=True)
    forced = [[10, 11, 12, backtrack_id, 13]]
    ((_, events),) = decode_all(
        tiny_model, char_tokenizer, backtrack_id, [([1, 5], params)], forced=forced
    )
    done = final_event(events)
    assert [removed["id"] for removed in done.removed_tokens] == [12]
    assert done.generated_text == char_tokenizer.decode([10, 11, 13])
    assert (done.finish_reason, done.generated_tokens) == ("length", 3)


def test_a_last_token_the_model_keeps_ends_the_request_at_the_limit(
    tiny_model, char_tokenizer, backtrack_id
):
    """The review's token is not appended: the output never exceeds max_new_tokens."""
    for policy in ("argmax", "never"):
        params = GenerationParams(max_new_tokens=4, ignore_eos=True, backtrack_policy=policy)
        with logit_bias(tiny_model, backtrack_id, -50.0):
            ((_, events),) = decode_all(
                tiny_model, char_tokenizer, backtrack_id, [([1, 5], params)]
            )
        done = final_event(events)
        assert (done.finish_reason, done.generated_tokens, done.backtracks) == ("length", 4, 0)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> LoadedCheckpoint:
    """The server tests' scripted checkpoint: `?` answers `hi`, then EOS leads and BT is second."""
    directory = save_scripted_checkpoint(tmp_path_factory.mktemp("scripted"), SCRIPT)
    return load_checkpoint(directory, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("layout", ["slots", "padded"])
def test_ignore_eos_keeps_the_answer_and_writes_exactly_max_new_tokens(scripted, layout):
    """After `hi` the model wants EOS, then BT: under ignore_eos the answer stays and `!`
    follows (barring EOS used to hand the step to BT, which deleted the answer)."""
    prompt = scripted.tokenizer.encode(EOS_FIRST_PROMPT)
    lengths = [2, 3, 6, 12]
    requests = [(prompt, GenerationParams(max_new_tokens=12))]
    requests += [(prompt, GenerationParams(max_new_tokens=n, ignore_eos=True)) for n in lengths]
    requests.append((prompt, GenerationParams(max_new_tokens=12, min_tokens=5)))
    loaded = (scripted.model, scripted.tokenizer, scripted.backtrack_id)
    free, *exact, at_least = decode_in_one_batch(*loaded, requests, layout)
    assert (free.generated_text, free.finish_reason) == ("hi", "eos")
    for n, done in zip(lengths, exact, strict=True):
        assert (done.finish_reason, done.generated_tokens, done.backtracks) == ("length", n, 0)
        assert done.generated_text == ("hi" + "!" * 10)[:n]
    assert (at_least.generated_text, at_least.finish_reason) == ("hi!!!", "eos")
