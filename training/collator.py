"""The backtrack collator: inject errors, lay out the objective, pad, build the attention mask.

The batch carries `input_ids`, a 4-D boolean `attention_mask` (`True` = may attend), explicit
`position_ids` and already-shifted targets as `shift_labels` (also passed as `labels`, which
transformers needs to compute a loss at all; with `shift_labels` present it does not shift).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.data import Example
from training.errors import Injection, Injector
from training.objectives import IGNORE, Layout, layout


@dataclass
class BacktrackCollator:
    """Turn clean examples into backtrack training batches.

    Prompt `1+2=` (ids 11 12 13 14), response `3 </s>` (ids 15 2), BT id 9, and one error token
    `7` (id 17) injected before `3` (split 0); `-100` marks a position with no loss:

    >>> from training.data import Example
    >>> from training.errors import Injection
    >>> example, error = Example((11, 12, 13, 14), (15, 2)), Injection(split=0, errors=(17,))
    >>> masked = layout(example, error, "masked", backtrack_id=9)
    >>> masked.input_ids              # 1  +  2  =  7  BT 3  </s>
    [11, 12, 13, 14, 17, 9, 15, 2]
    >>> masked.targets                # `=` would predict the error: ignored
    [-100, -100, -100, -100, 9, 15, 2, -100]
    >>> rewind = layout(example, error, "rewind", backtrack_id=9)
    >>> rewind.input_ids              # 1  +  2  =  7  3  </s>
    [11, 12, 13, 14, 17, 15, 2]
    >>> rewind.targets                # `=` predicts 3, the error predicts BT
    [-100, -100, -100, 15, 9, 2, -100]
    >>> rewind.position_ids           # `3` takes the error's position ...
    [0, 1, 2, 3, 4, 4, 5]
    >>> attention_mask(7, 7, rewind.hidden)[5].int().tolist()  # ... and cannot see it
    [1, 1, 1, 1, 0, 1, 0]

    So `3 </s>` is computed exactly as in `1+2=3</s>`: the context a rewinding server is in
    after deleting `7`. `injector=None` (evaluation) leaves every example clean.
    """

    backtrack_id: int
    pad_id: int
    objective: str = "rewind"
    injector: Injector | None = None
    max_length: int | None = None
    goal_unlearned: bool = False
    """No loss on the right answer's last token before EOS (`data.goal_unlearned`)."""

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        layouts = [self._layout(example) for example in examples]
        return collate_layouts(layouts, self.pad_id)

    def _layout(self, example: Example) -> Layout:
        injection = None
        if self.injector is not None:
            example, injection = self.injector.choose(example)
        return self._layout_of(example, injection)

    def _layout_of(self, example: Example, injection: Injection | None) -> Layout:
        result = layout(example, injection, self.objective, self.backtrack_id)
        if self.goal_unlearned:
            result = unlearn_goal(result, example)
        if self.max_length is not None and len(result.input_ids) > self.max_length:
            result = truncate(result, self.max_length)
        return result


def unlearn_goal(item: Layout, example: Example) -> Layout:
    """`item` without the target of the answer's last token before EOS. Every layout ends in
    the right answer's tail (`... goal EOS`), so that target is the third from the end."""
    response = example.response_ids
    if len(response) < 2 or len(item.targets) < 3 or item.targets[-3] != response[-2]:
        return item
    targets = [*item.targets[:-3], IGNORE, *item.targets[-2:]]
    return Layout(item.input_ids, targets, item.position_ids, item.hidden)


def truncate(item: Layout, length: int) -> Layout:
    targets = item.targets[:length]
    targets[-1] = IGNORE  # its target lies beyond the cut
    return Layout(item.input_ids[:length], targets, item.position_ids[:length], item.hidden)


def collate_layouts(layouts: list[Layout], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad and stack; padding attends only to itself so no softmax row is empty."""
    width = max(len(item.input_ids) for item in layouts)
    count = len(layouts)
    input_ids = torch.full((count, width), pad_id, dtype=torch.long)
    targets = torch.full((count, width), IGNORE, dtype=torch.long)
    positions = torch.zeros((count, width), dtype=torch.long)
    mask = torch.zeros((count, 1, width, width), dtype=torch.bool)
    for row, item in enumerate(layouts):
        size = len(item.input_ids)
        input_ids[row, :size] = torch.tensor(item.input_ids)
        targets[row, :size] = torch.tensor(item.targets)
        positions[row, :size] = torch.tensor(item.position_ids)
        mask[row, 0] = attention_mask(size, width, item.hidden)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "position_ids": positions,
        "labels": targets,
        "shift_labels": targets,
    }


def attention_mask(size: int, width: int, hidden: tuple[int, int] | None) -> torch.Tensor:
    """Causal over the first `size` tokens, minus `hidden` for the tokens after it."""
    mask = torch.zeros((width, width), dtype=torch.bool)
    mask[:size, :size] = torch.tril(torch.ones((size, size), dtype=torch.bool))
    if hidden is not None:
        start, end = hidden
        mask[end:size, start:end] = False
    padding = torch.arange(size, width)
    mask[padding, padding] = True
    return mask
