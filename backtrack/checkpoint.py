"""Backtrack checkpoints: a plain Hugging Face directory plus `backtrack.json`.

`AutoModelForCausalLM.from_pretrained(dir)` loads one with no project code; the metadata file
names the backtrack token, its id, the training objective and the training configuration. Beside
it, `custom_generate/generate.py` makes `from_pretrained(dir, trust_remote_code=True).generate`
backtrack (`backtrack.custom_generate`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from backtrack.custom_generate import write_custom_generate
from backtrack.prompts import PromptEncoder, encoder_for_checkpoint
from backtrack.tokens import BACKTRACK_TOKEN, backtrack_token_id

METADATA_FILE = "backtrack.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be served; the message says what is wrong and where."""


@dataclass
class CheckpointMetadata:
    """What a server or an evaluation needs to know beyond the Hugging Face files."""

    backtrack_token: str = BACKTRACK_TOKEN
    backtrack_token_id: int = -1
    objective: str = "rewind"
    """`rewind` (errors invisible to the continuation) or `masked` (errors and BTs stay in context)."""
    task: str | None = None
    """Name of the bundled task the model was trained on, when there is one."""
    prompt_format: str | None = None
    """How training wrote prompts (`plain` or `chat`, see `backtrack.prompts`); the server and the
    evaluation encode prompts the same way. None: not trained here."""
    training_config: dict[str, Any] = field(default_factory=dict)
    decoding: dict[str, Any] = field(default_factory=dict)
    """Backtracking defaults of plain transformers' `generate` (`custom_generate`): any of `mode`,
    `backtrack_policy`, `backtrack_threshold`, `max_backtracks`, `max_backtrack_depth`; a
    call's keywords override them, and what is not set takes the server's defaults."""


def save_checkpoint_files(directory: str | Path, metadata: CheckpointMetadata) -> Path:
    """What makes a Hugging Face directory a backtrack checkpoint: `custom_generate/` for plain
    transformers, then `backtrack.json` (last: its presence marks a complete checkpoint)."""
    write_custom_generate(directory)
    return save_metadata(directory, metadata)


def save_metadata(directory: str | Path, metadata: CheckpointMetadata) -> Path:
    path = Path(directory) / METADATA_FILE
    path.write_text(json.dumps(asdict(metadata), indent=2, sort_keys=True, default=str) + "\n")
    return path


def load_metadata(directory: str | Path) -> CheckpointMetadata:
    """Read `backtrack.json`; a directory without it gets defaults (any HF model with BT added)."""
    path = Path(directory) / METADATA_FILE
    if not path.exists():
        return CheckpointMetadata()
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    known = {name: raw[name] for name in CheckpointMetadata.__dataclass_fields__ if name in raw}
    return CheckpointMetadata(**known)


@dataclass
class LoadedCheckpoint:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    metadata: CheckpointMetadata
    backtrack_id: int
    path: Path

    @property
    def prompts(self) -> PromptEncoder:
        """Prompts encoded as this checkpoint was trained (its recorded `prompt_format`)."""
        return encoder_for_checkpoint(self.tokenizer, self.metadata.prompt_format)


def load_checkpoint(
    directory: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
) -> LoadedCheckpoint:
    """Load model, tokenizer and metadata, refusing anything that cannot backtrack.

    Raises CheckpointError with a message that names the directory and the problem: missing,
    not a model, or a tokenizer without the backtrack token.
    """
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {str(path)!r} does not exist")
    if gguf_file is None and not (path / "config.json").exists():
        raise CheckpointError(
            f"{str(path)!r} has no config.json: not a Hugging Face model directory"
        )
    metadata = load_metadata(path)
    extra: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        extra["gguf_file"] = gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    except Exception as error:  # transformers raises many types for unreadable files
        raise CheckpointError(f"cannot load the tokenizer from {str(path)!r}: {error}") from error
    bt_id = backtrack_token_id(tokenizer, metadata.backtrack_token)
    if bt_id is None:
        raise CheckpointError(
            f"the tokenizer in {str(path)!r} has no {metadata.backtrack_token!r} special token; "
            "train with `make train` or add it with backtrack.add_backtrack_token"
        )
    try:
        encoder_for_checkpoint(tokenizer, metadata.prompt_format)
    except ValueError as error:
        raise CheckpointError(f"{str(path)!r}: backtrack.json prompt_format: {error}") from error
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **extra)
    except Exception as error:
        raise CheckpointError(f"cannot load the model from {str(path)!r}: {error}") from error
    if model.get_input_embeddings().weight.shape[0] <= bt_id:
        raise CheckpointError(
            f"the model in {str(path)!r} has {model.get_input_embeddings().weight.shape[0]} embedding "
            f"rows but the backtrack token id is {bt_id}"
        )
    model.to(device).eval()
    return LoadedCheckpoint(model, tokenizer, metadata, bt_id, path)
