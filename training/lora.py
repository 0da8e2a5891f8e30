"""LoRA and QLoRA with peft: a large model fine-tuned on one GPU, written out as a plain checkpoint.

    python -m training.train --config configs/llama31_8b_gsm8k.yaml lora.enabled=true

The base weights stay frozen; low-rank adapters on the attention and MLP projections train. BT is
a new token, so its own rows must learn: with `lora.backtrack_rows: token` (the default) peft's
`trainable_token_indices` trains just BT's embedding row and, when untied, its output row, and
every other row of both matrices stays exactly as it was; `full` trains both matrices
(`modules_to_save`). At the end the adapters are merged into the weights and the run writes the
same plain Hugging Face directory plus `backtrack.json` as full fine-tuning: the server, the
evaluation and plain `transformers` load it without peft. The adapter itself is kept under
`<output_dir>/adapter/`.

With `lora.qlora: true` the frozen base is loaded in 4-bit NF4 (bitsandbytes, CUDA only). Merging
into 4-bit weights would round the result, so the merged checkpoint is built from a fresh
full-precision load of the base (`model.dtype`) with the saved adapter applied.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from transformers import PreTrainedModel

from training.config import ConfigError, LoraConfig, ModelConfig
from training.distributed import fsdp_requested
from training.modeling import StartingPoint, starting_point

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


@contextmanager
def peft_deprecations() -> Iterator[None]:
    """peft 0.21 asks transformers 5 `is_gradient_checkpointing`, deprecated for
    `is_activation_checkpointing`: a warning about peft's code, silenced here, nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def get_peft_model(model: PreTrainedModel, config):
    import peft

    with peft_deprecations():
        return peft.get_peft_model(model, config)


def load_adapter(model: PreTrainedModel, directory: Path):
    """`model` with the adapter saved in `directory` (unmerged), for inference."""
    import peft

    with peft_deprecations():
        return peft.PeftModel.from_pretrained(model, directory)


def check_supported(settings: LoraConfig, model: ModelConfig) -> None:
    """Refuse, naming the field, what cannot run: QLoRA without CUDA, LoRA under FSDP."""
    if settings.enabled and fsdp_requested():
        raise ConfigError(
            "lora.enabled trains on one GPU (or replicated with torchrun): launch it without an "
            "FSDP accelerate config, or set lora.enabled=false for sharded full fine-tuning"
        )
    if not settings.enabled or not settings.qlora:
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            "lora.qlora needs a CUDA GPU (bitsandbytes' 4-bit kernels); this machine has none: "
            "set lora.qlora=false to train the adapters on full-precision weights"
        )
    if model.name_or_path == "tiny":
        raise ConfigError("lora.qlora needs a pretrained model.name_or_path, not tiny")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("lora.qlora needs bitsandbytes: pip install bitsandbytes")


def quantization_config(settings: LoraConfig, dtype: torch.dtype):
    """The 4-bit NF4 loading config of QLoRA, or None."""
    if not (settings.enabled and settings.qlora):
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def peft_config(model: PreTrainedModel, settings: LoraConfig, backtrack_id: int):
    import peft

    tied = model.get_output_embeddings() is None or (
        model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    rows: dict = {}
    if settings.backtrack_rows == "token":
        # tied: peft ties the output row to the embedding's trainable row by itself
        layers = ["embed_tokens"] if tied else ["embed_tokens", "lm_head"]
        rows["trainable_token_indices"] = {name: [backtrack_id] for name in layers}
    else:
        rows["modules_to_save"] = ["embed_tokens"] if tied else ["embed_tokens", "lm_head"]
    return peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
        **rows,
    )


def wrap(start: StartingPoint, settings: LoraConfig, gradient_checkpointing: bool) -> StartingPoint:
    """The starting point with its model wrapped in LoRA adapters (frozen base)."""
    import peft

    model = start.model
    if settings.qlora:
        model = peft.prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    elif gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input
    wrapped = get_peft_model(model, peft_config(model, settings, start.backtrack_id))
    trainable, total = wrapped.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%d on %s: %d of %d parameters train (%.3f%%)",
        settings.r,
        ",".join(settings.target_modules),
        trainable,
        total,
        100 * trainable / total,
    )
    return replace(start, model=wrapped)


def merged_model(
    model, settings: LoraConfig, model_config: ModelConfig, init_words: list[str], seed: int
) -> PreTrainedModel:
    """A plain model with the adapters folded into its weights (saves as any other checkpoint)."""
    if not settings.qlora:
        return model.merge_and_unload()
    return merge_into_reloaded_base(model, model_config, init_words, seed)


def merge_into_reloaded_base(
    trained, model_config: ModelConfig, init_words: list[str], seed: int
) -> PreTrainedModel:
    """The base reloaded in `model.dtype` (BT added and initialised as for training), the trained
    adapter's weights (and BT's rows) applied, merged: what QLoRA's 4-bit base cannot give."""
    import peft

    base = starting_point(model_config, init_words, seed).model
    fresh = get_peft_model(base, trained.peft_config["default"])
    peft.set_peft_model_state_dict(fresh, peft.get_peft_model_state_dict(trained))
    return fresh.merge_and_unload()


def save_adapter(model, output: Path) -> Path:
    directory = output / ADAPTER_DIR
    model.save_pretrained(directory)
    return directory
