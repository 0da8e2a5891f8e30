"""The two training objectives: how one (possibly corrupted) example becomes a training sequence.

Both return a `Layout`: token ids, the target after every position (`-100` = no loss), position
ids, and the span the continuation must not see. Targets are already shifted (`targets[i]` is
what position `i` must predict), because under `rewind` the token after the last prefix position
in the sequence (`e1`) is not what that position must predict (`rest[0]`).

* `masked` (the original design): `prompt prefix e1..ek BT*k rest` in plain causal order. Nothing
  predicts a prompt or an error token; BT and the continuation are predicted.
* `rewind` (what a rewinding server computes): `prompt prefix e1..ek rest`, the errors' span
  hidden from `rest` and `rest`'s positions continuing from `prefix`. The last prefix position
  predicts `rest[0]`, every error position predicts BT, so after a rewind the model is in a state
  it was trained on.

A trace (`Injection.trace`: a wrong branch walked to its dead end) changes only the errors'
targets: the first error is still never predicted, but each later one is the target of the one
before it, and BT only of the last. Under `rewind` that is `e2..ek BT` at the error positions;
under `masked`, the targets `e2..ek` are trained as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.data import Example
from training.errors import Injection

IGNORE = -100


@dataclass(frozen=True)
class Layout:
    input_ids: list[int]
    targets: list[int]
    position_ids: list[int]
    hidden: tuple[int, int] | None = None
    """`[start, end)` of tokens that positions `>= end` must not attend to (rewind's errors)."""


def clean_layout(example: Example) -> Layout:
    ids = [*example.prompt_ids, *example.response_ids]
    return Layout(ids, _next_token_targets(ids, len(example.prompt_ids)), list(range(len(ids))))


def masked_layout(example: Example, injection: Injection, backtrack_id: int) -> Layout:
    """`prompt prefix e1..ek BT*k rest`; the targets that would be error tokens are ignored."""
    prompt, response = list(example.prompt_ids), list(example.response_ids)
    prefix, rest = response[: injection.split], response[injection.split :]
    errors = list(injection.errors)
    ids = prompt + prefix + errors + [backtrack_id] * len(errors) + rest
    targets = _next_token_targets(ids, len(prompt))
    first_error = len(prompt) + len(prefix)
    made = 1 if injection.trace else len(errors)  # a trace's later errors are the walk itself
    for index in range(first_error - 1, first_error + made - 1):
        targets[index] = IGNORE  # these positions would learn to make the errors
    return Layout(ids, targets, list(range(len(ids))))


def rewind_layout(example: Example, injection: Injection, backtrack_id: int) -> Layout:
    """`prompt prefix e1..ek rest` with the errors hidden from `rest` and skipped in positions."""
    prompt, response = list(example.prompt_ids), list(example.response_ids)
    prefix, rest = response[: injection.split], response[injection.split :]
    errors = list(injection.errors)
    start = len(prompt) + len(prefix)
    ids = prompt + prefix + errors + rest
    clean_targets = _next_token_targets(prompt + prefix + rest, len(prompt))
    after_errors = [*errors[1:], backtrack_id] if injection.trace else [backtrack_id] * len(errors)
    targets = clean_targets[:start] + after_errors + clean_targets[start:]
    positions = list(range(start)) + [start + j for j in range(len(errors))]
    positions += list(range(start, start + len(rest)))
    return Layout(ids, targets, positions, hidden=(start, start + len(errors)))


def layout(
    example: Example, injection: Injection | None, objective: str, backtrack_id: int
) -> Layout:
    if not example.prompt_ids:
        raise ValueError("every example needs at least one prompt token")
    if injection is None or not injection.errors:
        return clean_layout(example)
    if objective == "masked":
        return masked_layout(example, injection, backtrack_id)
    return rewind_layout(example, injection, backtrack_id)


def _next_token_targets(ids: list[int], prompt_length: int) -> list[int]:
    """Next-token targets from the last prompt position on; nothing before it, nothing at the end."""
    targets = [IGNORE] * len(ids)
    for index in range(prompt_length - 1, len(ids) - 1):
        targets[index] = ids[index + 1]
    return targets
