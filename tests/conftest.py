"""Fixtures shared by the whole suite: a tiny random Llama, a char tokenizer with BT, a checkpoint.

Nothing here touches the network; everything is built from a config in well under a second.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from backtrack.checkpoint import LoadedCheckpoint, load_checkpoint
from backtrack.tiny import (
    build_char_tokenizer,
    build_tiny_llama,
    save_tiny_checkpoint,
    tiny_llama_config,
)
from backtrack.tokens import backtrack_token_id

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# Servers the suite starts decode eagerly in float32, so that their figures match the in-process
# references; the compiled step and bf16 have tests of their own that set these explicitly.
os.environ.setdefault("BACKTRACK_COMPILE", "false")
os.environ.setdefault("BACKTRACK_DTYPE", "float32")


@pytest.fixture(scope="session")
def char_tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(char_tokenizer):
    config = tiny_llama_config(len(char_tokenizer), initializer_range=0.5)
    return build_tiny_llama(config, seed=0)


@pytest.fixture(scope="session")
def backtrack_id(char_tokenizer) -> int:
    token_id = backtrack_token_id(char_tokenizer)
    assert token_id is not None
    return token_id


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory) -> Path:
    """A servable checkpoint directory (random weights) shared by the session."""
    directory = tmp_path_factory.mktemp("tiny-checkpoint")
    save_tiny_checkpoint(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_checkpoint_dir) -> LoadedCheckpoint:
    return load_checkpoint(tiny_checkpoint_dir, torch.device("cpu"), torch.float32)
