"""The rewind objective computes exactly what a rewinding server computes, on a real tiny Llama."""

from __future__ import annotations

import doctest

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import training.collator
from training.collator import collate_layouts
from training.data import Example
from training.errors import Injection
from training.objectives import clean_layout, layout

ordinary = st.integers(min_value=4, max_value=40)


@st.composite
def cases(draw):
    prompt = draw(st.lists(ordinary, min_size=1, max_size=5))
    response = [*draw(st.lists(ordinary, min_size=0, max_size=6)), 2]
    split = draw(st.integers(0, len(response) - 1))
    errors = draw(st.lists(ordinary, min_size=1, max_size=4))
    return Example(tuple(prompt), tuple(response)), Injection(split, tuple(errors))


def forward(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits


@given(cases())
@settings(max_examples=12, deadline=None)
def test_logits_of_the_continuation_ignore_the_errors(tiny_model, backtrack_id, case):
    """Under `rewind`, prompt+prefix and `rest` get the logits of the sequence without errors."""
    example, injection = case
    corrupted = layout(example, injection, "rewind", backtrack_id)
    clean = clean_layout(example)
    # padded beside a longer clean row, so padding and batching are part of the check
    longer = clean_layout(Example(example.prompt_ids, (5,) * 12 + (2,)))
    logits = forward(tiny_model, collate_layouts([corrupted, longer], pad_id=0))[0]
    reference = forward(tiny_model, collate_layouts([clean], pad_id=0))[0]
    start, end = corrupted.hidden
    kept = torch.cat([logits[:start], logits[end : len(corrupted.input_ids)]])
    torch.testing.assert_close(kept, reference, atol=1e-4, rtol=1e-4)


def test_the_errors_do_change_the_logits_when_they_are_not_hidden(tiny_model, backtrack_id):
    """The check above has teeth: a causal mask over the same tokens gives different logits."""
    example, injection = Example((5, 6, 7), (8, 9, 2)), Injection(1, (20, 21))
    corrupted = layout(example, injection, "rewind", backtrack_id)
    visible = type(corrupted)(corrupted.input_ids, corrupted.targets, corrupted.position_ids, None)
    hidden = forward(tiny_model, collate_layouts([corrupted], 0))[0, -1]
    seen = forward(tiny_model, collate_layouts([visible], 0))[0, -1]
    assert not torch.allclose(hidden, seen, atol=1e-3)


def test_the_docstring_example_is_true():
    assert doctest.testmod(training.collator).failed == 0
