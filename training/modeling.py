"""The model and tokenizer a run starts from, with BT registered and initialised.

`tiny` builds a small Llama and the char tokenizer (`backtrack.tiny`) from scratch; anything else
is a local Hugging Face directory (optionally a GGUF file in it). Attention is SDPA: the `rewind`
objective's 4-D boolean mask needs an implementation that takes a custom mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config
from backtrack.tokens import add_backtrack_token
from training.config import ModelConfig
from training.token_init import InitReport, init_backtrack_embedding

logger = logging.getLogger(__name__)


@dataclass
class StartingPoint:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    backtrack_id: int
    init: InitReport | None
    """How BT was initialised; None for a model built from scratch (nothing to borrow)."""


def build_tiny(config: ModelConfig, seed: int) -> StartingPoint:
    tokenizer = build_char_tokenizer()
    llama = tiny_llama_config(
        len(tokenizer),
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = build_tiny_llama(llama, seed=seed).train()
    model.set_attn_implementation("sdpa")  # the rewind objective's 4-D masks were checked on SDPA
    return StartingPoint(model, tokenizer, add_backtrack_token(tokenizer, model), None)


def load_pretrained(
    config: ModelConfig, init_words: list[str], dtype: torch.dtype, quantization=None
) -> StartingPoint:
    extra: dict = {"trust_remote_code": config.trust_remote_code}
    if config.gguf_file:
        extra["gguf_file"] = config.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(config.name_or_path, **extra)
    quantized = {"quantization_config": quantization} if quantization is not None else {}
    model = AutoModelForCausalLM.from_pretrained(
        config.name_or_path, dtype=dtype, attn_implementation="sdpa", **extra, **quantized
    )
    if config.gguf_file:
        forget_gguf_origin(model)
    backtrack_id = add_backtrack_token(tokenizer, model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    report = init_backtrack_embedding(model, tokenizer, backtrack_id, init_words)
    logger.info(
        "BT (id %d) initialised from %s",
        backtrack_id,
        "the mean embedding" if report.fallback else report.source_tokens,
    )
    return StartingPoint(model.train(), tokenizer, backtrack_id, report)


def forget_gguf_origin(model: PreTrainedModel) -> None:
    """A GGUF model is de-quantized to full precision on load, yet still flagged as quantized,
    which makes the Trainer refuse it and `save_pretrained` write a GGUF quantization config.
    Its weights are ordinary tensors: drop the flag so it trains and saves as a plain model."""
    quantizer = getattr(model, "hf_quantizer", None)  # set by from_pretrained, not declared
    if quantizer is not None:
        quantizer.remove_quantization_config(model)


def starting_point(
    config: ModelConfig, init_words: list[str], seed: int, quantization=None
) -> StartingPoint:
    """`quantization`: a transformers quantization config (QLoRA's 4-bit base), pretrained only."""
    if config.name_or_path == "tiny":
        return build_tiny(config, seed)
    return load_pretrained(config, init_words, getattr(torch, config.dtype), quantization)
