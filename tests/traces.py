"""The same decoding seen from both sides: the project's decoder and a checkpoint's own
`custom_generate`, as comparable traces of appended and erased tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from backtrack.checkpoint import LoadedCheckpoint
from backtrack.decoder import generate
from backtrack.events import BacktrackEvent, DoneEvent, TokenEvent
from backtrack.params import GenerationParams

Edit = tuple[str, int, int]


@dataclass
class Trace:
    edits: list[Edit]
    """`("token", index, id)` appended, `("backtrack", index, id)` erased, in order."""
    sequence: list[int]
    """The prompt and the visible tokens after every deletion."""

    @property
    def deletions(self) -> int:
        return sum(kind == "backtrack" for kind, _, _ in self.edits)


def visible_after(edits: list[Edit]) -> list[int]:
    visible: list[int] = []
    for kind, index, token in edits:
        if kind == "token":
            assert index == len(visible)
            visible.append(token)
        else:
            assert (index, token) == (len(visible) - 1, visible[-1])
            visible.pop()
    return visible


def decoder_trace(checkpoint: LoadedCheckpoint, prompt: list[int], **params: Any) -> Trace:
    """What the server's decoder does with `prompt` (GenerationParams keywords)."""
    events = list(
        generate(
            checkpoint.model,
            checkpoint.tokenizer,
            checkpoint.backtrack_id,
            prompt,
            GenerationParams(**params),
        )
    )
    edits: list[Edit] = []
    for event in events:
        if isinstance(event, TokenEvent):
            edits.append(("token", event.index, event.id))
        elif isinstance(event, BacktrackEvent):
            edits.append(("backtrack", event.index, event.removed_id))
    assert isinstance(events[-1], DoneEvent)
    return Trace(edits, prompt + visible_after(edits))


def load_with_custom_generate(directory: Path) -> Any:
    """The checkpoint as plain transformers loads it, its own `generate` trusted."""
    return AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()


def custom_trace(model: Any, prompt: list[int], **params: Any) -> Trace:
    """What `model.generate` (the checkpoint's custom_generate) does with `prompt`."""
    output = model.generate(
        input_ids=torch.tensor([prompt]), return_dict_in_generate=True, **params
    )
    edits = [tuple(edit) for edit in output.edits[0]]
    assert output.sequences[0].tolist() == prompt + visible_after(edits)
    return Trace(edits, output.sequences[0].tolist())
