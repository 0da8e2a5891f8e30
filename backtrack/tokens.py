"""The `<|BACKTRACK|>` token: registering it on any tokenizer/model pair and finding its id."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

BACKTRACK_TOKEN = "<|BACKTRACK|>"


def backtrack_token_id(
    tokenizer: PreTrainedTokenizerBase, token: str = BACKTRACK_TOKEN
) -> int | None:
    """Return the id of the backtrack token, or None when the tokenizer does not know it.

    Only an *added special* token counts: a tokenizer that would split the string into pieces, or
    map it to the unknown token, has no backtrack token.
    """
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        return None
    token_id = vocab[token]
    if token_id == tokenizer.unk_token_id:
        return None
    return token_id


def add_backtrack_token(
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel | None = None,
    token: str = BACKTRACK_TOKEN,
) -> int:
    """Register the backtrack token as an added special token and grow the model's embeddings.

    Idempotent: a tokenizer that already has the token keeps its id. New embedding rows are left
    as `resize_token_embeddings` makes them; `training.token_init` gives them a meaningful value.
    """
    existing = backtrack_token_id(tokenizer, token)
    if existing is None:
        tokenizer.add_special_tokens({"additional_special_tokens": [token]})
        existing = backtrack_token_id(tokenizer, token)
        assert existing is not None, "tokenizer refused the backtrack token"
    if model is not None and embedding_rows(model) < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return existing


def input_embeddings(model: PreTrainedModel) -> torch.Tensor:
    """The model's input embedding matrix, one row per token id."""
    weight = model.get_input_embeddings().weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"the input embeddings' weight is a {type(weight).__name__}, not a tensor")
    return weight


def embedding_rows(model: PreTrainedModel) -> int:
    """How many token ids the model has embeddings for (may exceed the tokenizer's size)."""
    return int(input_embeddings(model).shape[0])
