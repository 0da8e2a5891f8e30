"""The model being served: loading it from the settings; its prompts encoded as it was trained."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backtrack.batch import BatchDecoder, choose_layout
from backtrack.checkpoint import CheckpointMetadata, load_checkpoint
from backtrack.core_share import CoreShare, core_share_for
from backtrack.device import resolve_device, resolve_dtype
from backtrack.prompts import PromptEncoder, SpecialTokens, encoder_for_checkpoint
from backtrack.threads import configure_threads, serving_threads
from server.settings import Settings
from server.special_text import SpecialTokensInPrompts

log = logging.getLogger(__name__)


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
    kv_layout: str = "auto"
    """The KV layout decoding runs on (`backtrack.batch.choose_layout`)."""
    compile_step: bool = False
    """Whether the decode step is compiled (only the slots layout compiles)."""
    threads: int = 1
    """The most threads a forward uses."""
    core_share: CoreShare | None = None
    """Lowers the count while other processes keep our cores busy (None: the count is fixed)."""
    special_tokens_in_prompts: SpecialTokensInPrompts = "parse"
    """What a special token written in prompt text becomes (`server.special_text`)."""

    @property
    def backtrack_token(self) -> str:
        return self.metadata.backtrack_token

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 1 << 30))

    @property
    def vocab_size(self) -> int:
        """Token ids below this are safe to feed: the smaller of the tokenizer's size and the
        embedding's rows (a tokenizer that gained tokens after the model was saved has ids the
        model cannot embed; on CUDA such an id is a device-side assert)."""
        weight = getattr(self.model.get_input_embeddings(), "weight", None)
        rows = weight.shape[0] if isinstance(weight, torch.Tensor) else len(self.tokenizer)
        return min(len(self.tokenizer), int(rows))

    def new_decoder(self, prefill_chunk_tokens: int) -> BatchDecoder:
        """The batch decoder for this model, on its KV layout and (maybe) compiled step."""
        return BatchDecoder(
            self.model,
            self.tokenizer,
            self.backtrack_id,
            prefill_chunk_tokens=prefill_chunk_tokens,
            kv_layout=self.kv_layout,
            compile_step=self.compile_step,
            core_share=self.core_share,
        )

    @property
    def prompts(self) -> PromptEncoder:
        """Prompts encoded as the checkpoint was trained (`backtrack.json` `prompt_format`)."""
        # refused text never reaches the encoder; should any, it is read as characters
        parse = self.special_tokens_in_prompts == "parse"
        mode: SpecialTokens = "parse" if parse else "text"
        return encoder_for_checkpoint(self.tokenizer, self.metadata.prompt_format, mode)


def load_served_model(settings: Settings) -> ServedModel:
    """Load the checkpoint named by the settings; raises CheckpointError with a clear message."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    threads = configure_threads(settings.threads or serving_threads())
    log.info("model threads: %d", threads)
    loaded = load_checkpoint(
        settings.checkpoint,
        device,
        dtype,
        trust_remote_code=settings.trust_remote_code,
        gguf_file=settings.gguf_file,
    )
    kv_layout = choose_layout(loaded.model, settings.kv_layout)  # UnsupportedModel names why not
    return ServedModel(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        backtrack_id=loaded.backtrack_id,
        metadata=loaded.metadata,
        model_id=settings.served_model_id,
        path=loaded.path,
        device=device,
        dtype=dtype,
        kv_layout=kv_layout,
        compile_step=settings.compile and kv_layout == "slots",
        threads=threads,
        core_share=core_share_for(settings.threads, threads),
        special_tokens_in_prompts=settings.special_tokens_in_prompts,
    )
