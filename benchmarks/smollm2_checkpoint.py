"""SmolLM2-135M as a plain Hugging Face checkpoint with `<|BACKTRACK|>`, for serving benchmarks.

    from benchmarks.smollm2_checkpoint import smollm2_checkpoint
    directory = smollm2_checkpoint()  # .cache/smollm2-hf, converted once

The model ships as a quantized GGUF (`bash scripts/fetch_smollm2.sh`). Our server could read it
directly, but vLLM and transformers' continuous batching compare fairly only on the same weights
in the same dtype, so the GGUF is de-quantized once into float32 safetensors plus tokenizer, with
BT registered and initialised exactly as training does (`training.modeling.load_pretrained`),
and the project's `backtrack.json`. The result loads in every engine with no GGUF reader.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from backtrack.checkpoint import METADATA_FILE, CheckpointMetadata, save_checkpoint_files
from training.config import BacktrackConfig, ModelConfig
from training.modeling import load_pretrained

REPO_ROOT = Path(__file__).resolve().parent.parent
GGUF_DIR = REPO_ROOT / ".cache" / "smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_DIR = REPO_ROOT / ".cache" / "smollm2-hf"


def smollm2_missing(gguf_dir: Path = GGUF_DIR) -> str | None:
    """None when the GGUF is cached, else why not, so a benchmark can skip the model politely."""
    if (gguf_dir / GGUF_FILE).exists():
        return None
    return (
        f"{gguf_dir / GGUF_FILE} is missing: run `bash scripts/fetch_smollm2.sh .venv/bin/python`"
    )


def convert(gguf_dir: Path, output: Path) -> Path:
    """De-quantize the GGUF into `output`: float32 safetensors, tokenizer, BT, `backtrack.json`."""
    config = ModelConfig(name_or_path=str(gguf_dir), gguf_file=GGUF_FILE, dtype="float32")
    start = load_pretrained(config, BacktrackConfig().init_words, torch.float32)
    start.model.eval().save_pretrained(output, safe_serialization=True)
    start.tokenizer.save_pretrained(output)
    metadata = CheckpointMetadata(
        backtrack_token_id=start.backtrack_id,
        training_config={"source": f"{GGUF_FILE}, de-quantized, not fine-tuned"},
    )
    save_checkpoint_files(output, metadata)  # backtrack.json last: it marks a complete conversion
    return output


def smollm2_checkpoint(gguf_dir: Path = GGUF_DIR, output: Path = CONVERTED_DIR) -> Path:
    """The converted directory, made on first use; a half-written one is never left behind."""
    if (output / METADATA_FILE).exists():
        return output
    reason = smollm2_missing(gguf_dir)
    if reason is not None:
        raise FileNotFoundError(reason)
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{output.name}-", dir=output.parent))
    try:
        convert(gguf_dir, scratch)
        shutil.rmtree(output, ignore_errors=True)
        scratch.rename(output)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return output
