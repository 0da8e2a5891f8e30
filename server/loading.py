"""The model being served: loading it from the settings; its prompts encoded as it was trained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backtrack.checkpoint import CheckpointMetadata, load_checkpoint
from backtrack.device import resolve_device, resolve_dtype
from backtrack.kv import check_supported
from backtrack.prompts import PromptEncoder, encoder_for_checkpoint
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

    @property
    def prompts(self) -> PromptEncoder:
        """Prompts encoded as the checkpoint was trained (`backtrack.json` `prompt_format`)."""
        return encoder_for_checkpoint(self.tokenizer, self.metadata.prompt_format)


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
