"""The model being served: loading it from the settings, and turning prompts into token ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backtrack.checkpoint import CheckpointMetadata, load_checkpoint
from backtrack.device import resolve_device, resolve_dtype
from backtrack.kv import check_supported
from server.settings import Settings


@dataclass
class ServedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    backtrack_id: int
    metadata: CheckpointMetadata
    model_id: str
    path: Path
    device: torch.device
    dtype: torch.dtype

    @property
    def backtrack_token(self) -> str:
        return self.metadata.backtrack_token

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Prompt ids as the model was trained to see them (the tokenizer's special tokens).

        A rendered chat template already holds its special tokens: pass False for it.
        """
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """The checkpoint's chat template applied, or a plain `role: content` transcript."""
        if self.has_chat_template:
            rendered = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            return str(rendered)
        lines = [f"{message['role']}: {message['content']}" for message in messages]
        return "\n".join([*lines, "assistant: "])


def load_served_model(settings: Settings) -> ServedModel:
    """Load the checkpoint named by the settings; raises CheckpointError with a clear message."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    loaded = load_checkpoint(
        settings.checkpoint,
        device,
        dtype,
        trust_remote_code=settings.trust_remote_code,
        gguf_file=settings.gguf_file,
    )
    check_supported(loaded.model)  # UnsupportedModel (a ValueError) names what cannot be rewound
    return ServedModel(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        backtrack_id=loaded.backtrack_id,
        metadata=loaded.metadata,
        model_id=settings.served_model_id,
        path=loaded.path,
        device=device,
        dtype=dtype,
    )
