"""Decoder fixtures: a way to bias the tiny model's logits towards BT with real forwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def logit_bias(model: torch.nn.Module, token_id: int, bias: float) -> Iterator[None]:
    """Add `bias` to one token's logit in every forward of `model` (a hook on the LM head)."""

    def add_bias(_module, _inputs, output):
        output = output.clone()
        output[..., token_id] += bias
        return output

    handle = model.lm_head.register_forward_hook(add_bias)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture
def biased() -> Callable:
    return logit_bias
