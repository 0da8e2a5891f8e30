"""Log-probabilities from the step that drew each token (`TokenEvent.score`, OpenAI `logprobs`).

In `rewind` mode a kept token's context when it was drawn is its context in the final text, so
its score from that step must equal what a fresh forward over prompt + final text gives: checked
against real forwards of a tiny Llama, for rows that join a batch at different steps, rewind
(forced BTs, which also ban the erased token) and sample. `keep` mode leaves deleted tokens and BT
in the context, so its tokens carry no step score (the server scores them with a forward).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backtrack.batch import BatchDecoder
from backtrack.events import Event, TokenEvent, VisibleText, event_payload
from backtrack.params import GenerationParams
from backtrack.row import Row

FIXTURES = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def decode(model, tokenizer, backtrack_id, requests, score_top, rewinds, layout="slots"):
    """Every request in one decoder, request i joining at step i; `rewinds[i]` forced BTs queued
    after its third decision. Returns each row's prompt and events."""
    decoder = BatchDecoder(model, tokenizer, backtrack_id, kv_layout=layout)
    rows: list[Row] = []
    events: dict[Row, list[Event]] = {}
    step = 0
    while step < 500 and (decoder.rows or len(rows) < len(requests)):
        if step < len(requests):
            prompt, params = requests[step]
            rows.append(decoder.add(prompt, params, score_top=score_top))
            events[rows[-1]] = []
        for row, row_events in decoder.step().events.items():
            events[row].extend(row_events)
        for index, row in enumerate(rows):
            if row.decisions == 3 and not row.finished and rewinds[index] and not row.forced:
                row.forced.extend([backtrack_id] * rewinds[index])
                rewinds[index] = 0
        step += 1
    return [(row.prompt_ids, events[row]) for row in rows]


def kept_tokens(events: list[Event]) -> list[TokenEvent]:
    visible = VisibleText()
    for event in events:
        visible.apply(event)
    return visible.tokens


def fresh_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("layout", ["slots", "padded"])
@FIXTURES
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    rewinds=st.lists(st.integers(0, 2), min_size=4, max_size=4),
    sample=st.booleans(),
    top=st.integers(0, 4),
)
def test_step_scores_equal_a_fresh_forward_over_the_final_text(
    tiny_model, char_tokenizer, backtrack_id, lengths, rewinds, sample, top, layout
):
    params = GenerationParams(max_new_tokens=8, do_sample=sample, temperature=1.5, seed=7)
    requests = [([1, *range(5, 5 + length)], params) for length in lengths]
    decoded = decode(tiny_model, char_tokenizer, backtrack_id, requests, top, rewinds, layout)
    for prompt, events in decoded:
        kept = kept_tokens(events)
        fresh = fresh_logprobs(tiny_model, prompt + [token.id for token in kept])
        for position, token in enumerate(kept, start=len(prompt) - 1):
            assert token.score is not None
            assert token.score.logprob == pytest.approx(float(fresh[position, token.id]), abs=1e-3)
            values, indices = fresh[position].topk(top) if top else (torch.empty(0), [])
            assert [alt for alt, _ in token.score.top] == list(indices[: len(token.score.top)])
            assert [lp for _, lp in token.score.top] == pytest.approx(values.tolist(), abs=1e-3)


def test_tokens_are_unscored_unless_asked_and_in_keep_mode(
    tiny_model, char_tokenizer, backtrack_id
):
    rewind = GenerationParams(max_new_tokens=6)
    keep = GenerationParams(max_new_tokens=6, mode="keep")
    unasked = decode(tiny_model, char_tokenizer, backtrack_id, [([1, 5], rewind)], None, [1])
    kept = decode(tiny_model, char_tokenizer, backtrack_id, [([1, 5], keep)], 2, [1])
    for _, events in unasked + kept:
        tokens = [event for event in events if isinstance(event, TokenEvent)]
        assert tokens and all(token.score is None for token in tokens)


def test_the_score_stays_in_the_process(tiny_model, char_tokenizer, backtrack_id):
    """The native stream's token event is unchanged: the score is not part of its payload."""
    params = GenerationParams(max_new_tokens=2)
    [(_, events)] = decode(tiny_model, char_tokenizer, backtrack_id, [([1, 5], params)], 3, [0])
    token = next(event for event in events if isinstance(event, TokenEvent))
    assert token.score is not None
    assert set(event_payload(token)) == {"index", "id", "text", "logprob"}
