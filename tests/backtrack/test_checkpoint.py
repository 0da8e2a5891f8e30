from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from backtrack.checkpoint import CheckpointError, load_checkpoint, load_metadata
from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config
from backtrack.tokens import BACKTRACK_TOKEN, add_backtrack_token, backtrack_token_id

CPU = torch.device("cpu")


def test_checkpoint_loads_with_plain_transformers(tiny_checkpoint_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint_dir)
    bt_id = backtrack_token_id(tokenizer)
    assert bt_id is not None and bt_id < model.config.vocab_size
    assert tokenizer.convert_ids_to_tokens(bt_id) == BACKTRACK_TOKEN
    assert load_metadata(tiny_checkpoint_dir).backtrack_token_id == bt_id


def test_missing_directory_is_refused_with_its_name(tmp_path):
    with pytest.raises(CheckpointError, match="does-not-exist"):
        load_checkpoint(tmp_path / "does-not-exist", CPU, torch.float32)


def test_directory_without_a_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(tmp_path, CPU, torch.float32)


def test_tokenizer_without_backtrack_token_is_refused(tmp_path):
    tokenizer = build_char_tokenizer(with_backtrack=False)
    build_tiny_llama(tiny_llama_config(len(tokenizer))).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="BACKTRACK"):
        load_checkpoint(tmp_path, CPU, torch.float32)


def test_add_backtrack_token_is_idempotent_and_grows_embeddings():
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tiny_llama_config(len(tokenizer)))
    first = add_backtrack_token(tokenizer, model, "<|UNDO|>")
    second = add_backtrack_token(tokenizer, model, "<|UNDO|>")
    assert first == second == len(tokenizer) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert tokenizer.encode("1<|UNDO|>2") == [
        tokenizer.convert_tokens_to_ids("1"),
        first,
        tokenizer.convert_tokens_to_ids("2"),
    ]
