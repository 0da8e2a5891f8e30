"""The position-addressed layout: rewinds without copies, slots that stay packed, sliding
windows, bf16, and the compiled step decoding exactly as the eager one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import MistralConfig, MistralForCausalLM

from backtrack.batch import BatchDecoder, choose_layout
from backtrack.compiled import CompiledStep
from backtrack.events import replay
from backtrack.kv import UnsupportedModel
from backtrack.params import GenerationParams
from backtrack.slots import SlotKV, position_mask
from backtrack.tiny import build_tiny_llama, tiny_llama_config
from tests.backtrack.test_batch import (
    FIXTURES,
    PLAN,
    assert_same_decoding,
    fresh_logits,
    run,
    visible_logits_are_fresh,
)

STEADY = GenerationParams(max_new_tokens=30, backtrack_policy="never", ignore_eos=True)


def test_a_rewind_only_shortens_the_row_no_kv_moves(tiny_model, char_tokenizer, backtrack_id):
    decoder = BatchDecoder(tiny_model, char_tokenizer, backtrack_id, kv_layout="slots")
    kv = decoder.kv
    assert isinstance(kv, SlotKV)
    rows = [decoder.add([1, 5, 6 + index], STEADY) for index in range(3)]
    for _ in range(6):
        decoder.step()
    buffers = [keys.data_ptr() for keys in kv.cache.key_buffers]
    snapshot = [keys.clone() for keys in kv.cache.key_buffers]
    middle = kv.keys.index(rows[1])
    before = kv.lengths[middle]
    kv.drop_last(rows[1], 2)
    assert kv.lengths[middle] == before - 2
    assert [keys.data_ptr() for keys in kv.cache.key_buffers] == buffers
    for keys, old in zip(kv.cache.key_buffers, snapshot, strict=True):
        assert torch.equal(keys, old)  # nothing was written: the mask alone forgets the slots


def test_a_row_that_leaves_frees_its_slot_and_the_others_decode_on(
    tiny_model, char_tokenizer, backtrack_id
):
    decoder = BatchDecoder(tiny_model, char_tokenizer, backtrack_id, kv_layout="slots")
    rows = [decoder.add([1, 5, 6 + index, 7], STEADY) for index in range(4)]
    for _ in range(5):
        decoder.step()
    decoder.cancel(rows[0], "cancelled")
    assert decoder.kv.rows == 3 and rows[0] not in decoder.kv.keys
    assert decoder.kv.keys[0] is rows[3]  # the last row moved into the freed slot
    assert decoder.kv.tokens_held() == sum(row.cached for row in rows[1:])
    for _ in range(3):
        decoder.forward()
        for row in decoder.rows:
            torch.testing.assert_close(
                row.next_logits, fresh_logits(tiny_model, row.context_ids), atol=1e-4, rtol=1e-4
            )
            row.decide(False, row.context_ids[-1] % 20 + 5, 0.0)


def test_the_mask_shows_each_query_its_own_past_and_window():
    positions = torch.tensor([[3], [0]])
    mask = position_mask(positions, 6, None)
    assert mask[0, 0, 0].tolist() == [True, True, True, True, False, False]
    assert mask[1, 0, 0].tolist() == [True, False, False, False, False, False]
    windowed = position_mask(positions, 6, 2)
    assert windowed[0, 0, 0].tolist() == [False, False, True, True, False, False]


def sliding_model(char_tokenizer, window: int = 4) -> MistralForCausalLM:
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(char_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=window,
        max_position_embeddings=256,
        initializer_range=0.5,
    )
    return MistralForCausalLM(config).eval()


@FIXTURES
@given(plans=st.lists(PLAN, min_size=2, max_size=5), chunk=st.integers(1, 8))
def test_sliding_window_models_rewind_on_slots_as_a_fresh_forward_sees_them(
    char_tokenizer, backtrack_id, plans, chunk
):
    model = sliding_model(char_tokenizer)
    assert choose_layout(model) == "slots"
    outcomes = run(
        model, char_tokenizer, backtrack_id, plans, chunk, visible_logits_are_fresh(model)
    )
    for outcome in outcomes:
        assert replay(outcome.events) == outcome.done.generated_text


def test_a_model_mixing_full_and_sliding_layers_is_refused_by_slots(char_tokenizer):
    model = sliding_model(char_tokenizer)
    model.config.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(UnsupportedModel, match="mixes full and sliding"):
        choose_layout(model, "slots")


def test_bf16_rows_decide_on_float32_logits_that_match_a_fresh_forward(
    char_tokenizer, backtrack_id
):
    model = build_tiny_llama(tiny_llama_config(len(char_tokenizer), initializer_range=0.5))
    model = model.to(torch.bfloat16)
    decoder = BatchDecoder(model, char_tokenizer, backtrack_id, kv_layout="slots")
    rows = [decoder.add([1, 5, 6 + index], STEADY) for index in range(3)]
    decoder.prefill()
    for step in range(8):
        decoder.forward()
        for row in rows:
            if row.ready:
                assert row.next_logits.dtype == torch.float32
                torch.testing.assert_close(
                    row.next_logits, fresh_logits(model, row.context_ids), atol=0.1, rtol=0.05
                )
        decoder.decide()
        if step == 3:
            rows[1].backtrack()


COMPILED = FIXTURES.__class__(parent=FIXTURES, max_examples=6)


@COMPILED
@given(plans=st.lists(PLAN, min_size=2, max_size=6), chunk=st.integers(1, 8))
def test_the_compiled_step_decodes_exactly_as_the_eager_one(
    tiny_model, char_tokenizer, backtrack_id, plans, chunk
):
    eager = run(tiny_model, char_tokenizer, backtrack_id, plans, chunk, layout="slots")
    compiled = run(
        tiny_model,
        char_tokenizer,
        backtrack_id,
        plans,
        chunk,
        visible_logits_are_fresh(tiny_model),
        layout="slots",
        compiled=True,
    )
    assert_same_decoding(eager, compiled)


def test_warm_up_compiles_every_graph_serving_needs_and_growth_compiles_none(
    tiny_model, char_tokenizer, backtrack_id
):
    decoder = BatchDecoder(tiny_model, char_tokenizer, backtrack_id, kv_layout="slots")
    step = CompiledStep(decoder.kv)
    step.warm_up(max_rows=16)
    assert step.compiles == 2  # a batch of one, and one dynamic graph for every other size
    assert decoder.kv.rows == 0
    params = GenerationParams(max_new_tokens=150, backtrack_policy="never", ignore_eos=True)
    rows = [decoder.add([1, 5, 6 + index % 5], params) for index in range(9)]
    before = (decoder.kv.capacity_rows, decoder.kv.slots)
    while decoder.rows:
        decoder.step()
    assert (decoder.kv.capacity_rows, decoder.kv.slots) > before  # the buffers grew...
    assert step.compiles == 2  # ...and the graphs took them as they were
    assert all(len(row.visible_ids) == 150 for row in rows)
    decoder.add([1, 5], STEADY)
    decoder.prefill()
    with pytest.raises(RuntimeError, match="before any row joins"):
        step.warm_up(max_rows=2)
