"""Semantic initialisation of the BT embedding.

A freshly added token starts wherever `resize_token_embeddings` puts it, far from anything the
pretrained model knows. Starting BT at the mean embedding of words that mean "delete" ("delete",
"undo", "erase", "back", ...) gives it a meaning the model already has, so fine-tuning moves it
less. Only words that are one token on their own (with or without a leading space) are used:
the pieces of a split word carry none of its meaning. With none of them, the mean embedding of
the ordinary vocabulary is the fallback. The output row gets the same treatment when the
embeddings are untied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backtrack.tokens import embedding_rows, input_embeddings


@dataclass(frozen=True)
class InitReport:
    source_ids: list[int]
    """The tokens averaged; empty when the fallback (mean of the vocabulary) was used."""
    source_tokens: list[str]

    @property
    def fallback(self) -> bool:
        return not self.source_ids


def related_token_ids(
    tokenizer: PreTrainedTokenizerBase, words: Iterable[str], exclude: Iterable[int] = ()
) -> list[int]:
    """Ids of the words that are single ordinary tokens, in variants `w`, ` w`, `W`, ` W`."""
    skip = set(exclude) | set(tokenizer.all_special_ids)
    found: list[int] = []
    for word in words:
        for variant in (word, " " + word, word.capitalize(), " " + word.capitalize()):
            ids = tokenizer.encode(variant, add_special_tokens=False)
            single = len(ids) == 1 and ids[0] != tokenizer.unk_token_id
            if single and ids[0] not in skip and ids[0] not in found:
                found.append(ids[0])
    return found


@torch.no_grad()
def init_backtrack_embedding(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    backtrack_id: int,
    words: Iterable[str],
) -> InitReport:
    """Set BT's input (and untied output) embedding to the mean of the related tokens' rows."""
    source_ids = related_token_ids(tokenizer, words, exclude=[backtrack_id])
    fallback_ids = _ordinary_ids(tokenizer, embedding_rows(model))
    rows = source_ids or fallback_ids
    inputs = input_embeddings(model)
    inputs[backtrack_id] = inputs[rows].float().mean(dim=0).to(inputs.dtype)
    outputs = model.get_output_embeddings()
    if outputs is not None and outputs.weight.data_ptr() != inputs.data_ptr():
        outputs.weight[backtrack_id] = (
            outputs.weight[rows].float().mean(dim=0).to(outputs.weight.dtype)
        )
        if getattr(outputs, "bias", None) is not None:
            outputs.bias[backtrack_id] = outputs.bias[rows].float().mean()
    tokens = tokenizer.convert_ids_to_tokens(source_ids)
    return InitReport(source_ids, [tokens] if isinstance(tokens, str) else list(tokens))


def _ordinary_ids(tokenizer: PreTrainedTokenizerBase, rows: int) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [token for token in range(min(rows, len(tokenizer))) if token not in special]
