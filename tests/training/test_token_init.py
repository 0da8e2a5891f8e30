"""BT starts at the mean embedding of words that mean "delete"."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from backtrack.tokens import add_backtrack_token
from training.token_init import init_backtrack_embedding, related_token_ids

WORDS = ["<unk>", "<pad>", "</s>", "delete", "undo", "erase", "back", "cat", "dog", "sun", "Delete"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    )


def untied_model(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def test_bt_embedding_is_the_mean_of_the_related_words():
    tokenizer = word_tokenizer()
    model = untied_model(len(tokenizer))
    bt = add_backtrack_token(tokenizer, model)
    report = init_backtrack_embedding(model, tokenizer, bt, ["delete", "undo", "erase", "back"])
    related = [WORDS.index(w) for w in ("delete", "Delete", "undo", "erase", "back")]
    assert sorted(report.source_ids) == sorted(related)
    inputs, outputs = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    torch.testing.assert_close(inputs[bt], inputs[related].mean(dim=0))
    torch.testing.assert_close(outputs[bt], outputs[related].mean(dim=0))
    assert not torch.allclose(inputs[bt], inputs[WORDS.index("cat")])


def test_words_the_vocabulary_lacks_fall_back_to_the_mean_embedding():
    tokenizer = word_tokenizer()
    model = untied_model(len(tokenizer))
    bt = add_backtrack_token(tokenizer, model)
    report = init_backtrack_embedding(model, tokenizer, bt, ["rewind", "backspace"])
    assert report.fallback
    ordinary = [WORDS.index(w) for w in WORDS if not w.startswith("<") and w != "</s>"]
    weight = model.get_input_embeddings().weight
    torch.testing.assert_close(weight[bt], weight[ordinary].mean(dim=0))


def test_special_and_unknown_tokens_never_count_as_related():
    tokenizer = word_tokenizer()
    assert related_token_ids(tokenizer, ["pad", "</s>", "zebra"]) == []
