"""Small models and tokenizers made locally: no hub, no download.

A character-level tokenizer (every character one token, `<|BACKTRACK|>` an added special token)
and a Llama-architecture model built from a config. The default training run and the test suite
both stand on these.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from backtrack.tokens import BACKTRACK_TOKEN

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
DEFAULT_ALPHABET = string.digits + "+-*=() " + string.ascii_lowercase + ".,:;?!'\"\n"


def build_char_tokenizer(
    alphabet: str = DEFAULT_ALPHABET, with_backtrack: bool = True
) -> PreTrainedTokenizerFast:
    """A tokenizer with one token per character of `alphabet`, BOS/EOS/PAD/UNK and BT.

    BPE with no merges splits text into characters; the Fuse decoder joins them back without
    spaces, so decode(encode(text)) == text for text over the alphabet.
    """
    specials = [PAD, BOS, EOS, UNK]
    chars = sorted(set(alphabet))
    vocab = {token: index for index, token in enumerate(specials + chars)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=[BACKTRACK_TOKEN] if with_backtrack else [],
    )
    tokenizer.model_max_length = 512
    return tokenizer


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_positions: int = 512,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    pad_token_id: int = 0,
    initializer_range: float = 0.02,
) -> LlamaConfig:
    """A Llama config small enough to train from scratch on two CPU cores."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )


def build_tiny_llama(config: LlamaConfig, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised model; the seed makes test fixtures reproducible."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.eval()


def save_tiny_checkpoint(directory: str, seed: int = 0, initializer_range: float = 0.5) -> str:
    """Write a random tiny model + char tokenizer + metadata: a servable checkpoint in a second.

    A large initializer range makes the random model's greedy output vary from token to token,
    which tests need; the default 0.02 gives near-uniform logits and one repeated character.
    """
    from backtrack.checkpoint import CheckpointMetadata, save_checkpoint_files
    from backtrack.tokens import backtrack_token_id

    tokenizer = build_char_tokenizer()
    config = tiny_llama_config(len(tokenizer), initializer_range=initializer_range)
    model = build_tiny_llama(config, seed=seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    bt_id = backtrack_token_id(tokenizer)
    assert bt_id is not None
    metadata = CheckpointMetadata(
        backtrack_token_id=bt_id, objective="rewind", prompt_format="plain"
    )
    save_checkpoint_files(directory, metadata)
    return directory
