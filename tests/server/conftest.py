"""Server fixtures: a scripted checkpoint whose greedy output backtracks at known places.

The scripted model is a real Llama checkpoint whose weights make its next-token ranking depend
only on the last token: attention and MLP outputs are zeroed, embeddings are one-hot and the LM
head holds a transition table. Prompt `1+1=` then decodes, greedily, as

    token "3", backtrack, token "2", token "x", backtrack, token " ", "o", "k", EOS

(after a rewind the deleted token is banned, so the second choice follows). A prompt ending in
`z` repeats `z` forever, for requests that must still be running when the test acts. A prompt
ending in `?` answers `hi`, after which the model ranks EOS first, BT second and `!` third: what
the default checkpoint does after its answer, for `ignore_eos` and `min_tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from backtrack.checkpoint import CheckpointMetadata, save_checkpoint_files
from backtrack.tiny import EOS, build_char_tokenizer, tiny_llama_config
from backtrack.tokens import BACKTRACK_TOKEN, backtrack_token_id
from server.process import ServerHandle, running_server

SCRIPT: dict[str, list[str]] = {
    "=": ["3", "2"],
    "3": [BACKTRACK_TOKEN],
    "2": ["x", " "],
    "x": [BACKTRACK_TOKEN],
    " ": ["o"],
    "o": ["k"],
    "k": [EOS],
    "z": ["z"],
    "?": ["h"],
    "h": ["i"],
    "i": [EOS, BACKTRACK_TOKEN, "!"],
    "!": [EOS, BACKTRACK_TOKEN, "!"],
}
"""Last token -> next tokens, best first. Unlisted tokens go to EOS."""
PROMPT = "1+1="
EXPECTED_TEXT = "2 ok"
EXPECTED_REMOVED = ["3", "x"]
EOS_FIRST_PROMPT = "?"
"""Answers `hi`; then EOS is the model's first choice, BT its second and `!` its third."""
LOOP_PROMPT = "zz"
"""Continues with `z` until a limit: for requests that must still be running when a test acts."""
API_KEY = "test-key"
MODEL_ID = "scripted"
"""The served model id of the `server` fixture (OpenAI routes answer 404 for any other)."""
PAGE_ORIGIN = "http://page.example"


def save_scripted_checkpoint(directory: Path, script: dict[str, list[str]]) -> Path:
    """Write a checkpoint whose greedy ranking after token `t` is `script[t]`."""
    tokenizer = build_char_tokenizer()
    vocab = tokenizer.get_vocab()
    size = len(tokenizer)
    config = tiny_llama_config(size, hidden_size=64, max_positions=8192)
    config.tie_word_embeddings = False
    model = LlamaForCausalLM(config).eval()
    hidden = config.hidden_size
    scores = torch.zeros(size, size)
    scores[:, vocab[EOS]] = 5.0
    for last, ranking in script.items():
        for rank, token in enumerate(ranking):
            scores[vocab[last], vocab[token]] = 20.0 - 5.0 * rank
    with torch.no_grad():
        embedding = torch.zeros(size, hidden)
        embedding[:, :size] = torch.eye(size)
        model.model.embed_tokens.weight.copy_(embedding)
        head = torch.zeros(size, hidden)
        head[:, :size] = scores.T / math.sqrt(hidden)
        model.lm_head.weight.copy_(head)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    bt_id = backtrack_token_id(tokenizer)
    metadata = CheckpointMetadata(
        backtrack_token_id=bt_id, objective="rewind", prompt_format="plain"
    )
    save_checkpoint_files(directory, metadata)
    return directory


@pytest.fixture(scope="session")
def scripted_checkpoint_dir(tmp_path_factory) -> Path:
    """`1+1=` -> `2 ok` with two backtracks; `zz` -> `z` repeated until a limit."""
    directory = tmp_path_factory.mktemp("scripted-checkpoint")
    return save_scripted_checkpoint(directory, SCRIPT)


@pytest.fixture(scope="session")
def server(scripted_checkpoint_dir) -> Iterator[ServerHandle]:
    """One server for the read-mostly tests, with an API key (clients send it)."""
    with running_server(
        scripted_checkpoint_dir,
        api_key=API_KEY,
        model_id=MODEL_ID,
        max_new_tokens=4000,
        max_input_tokens=64,
        cors_origins=[PAGE_ORIGIN],
    ) as handle:
        yield handle
