"""The generation record: one JSON line per finished generation, for backtrack analytics.

The server writes it (`server.event_log`, setting `event_log`) and evaluation writes it
(`python -m training.evaluate --log-events`); `python -m training.analyze` reads it. A record
holds what the *decoder* did, every append and every deletion in order, not what a client was
shown (a stream may hold tokens back and never show the ones deleted meanwhile).

Schema version 1, one object per line:

    {"schema_version": 1, "id": "9f1c...", "source": "server", "endpoint": "/generate",
     "time": 1764745000.12, "elapsed_s": 0.41, "prompt_tokens": 5, "finish_reason": "eos",
     "generated_tokens": 2, "sampled_tokens": 4, "backtracks": 1, "ignored_backtracks": 0,
     "mode": "rewind", "backtrack_policy": "argmax",
     "events": [{"t": "token", "index": 0, "kind": "digit", "logprob": -0.01},
                {"t": "token", "index": 1, "kind": "letter", "logprob": -2.3},
                {"t": "backtrack", "index": 1, "depth": 1, "kind": "letter", "logprob": -2.3},
                {"t": "token", "index": 1, "kind": "digit", "logprob": -0.2}]}

`index` is the position in the answer (0-based); a backtrack's `kind` and `logprob` are those of
the token it deleted, and its `depth` counts the deletions in a row that end with it (1 for a
deletion right after a token, 2 for the one after that, ...). `kind` is one of `KINDS`, judged
on the token's text without surrounding whitespace. `logprob` is null where it is not finite.
The tokens of a stop sequence are events too, though the answer is cut before them
(`generated_tokens` counts the tokens a client received).
Text is left out unless asked for: then the record adds `prompt`, `prompt_ids` and `text` (the
final answer), and every event its token's `id` and `text`. Evaluation records always carry
text, plus `expected` (the right answer), `problem` (its index) and `run` (how it was decoded).

    >>> edits = edits_from_events([TokenEvent(0, 7, "4", -0.1), TokenEvent(1, 8, "x", -2.0),
    ...                            BacktrackEvent(1, 8, "x", 1)])
    >>> [entry["t"] + str(entry["index"]) for entry in event_entries(edits, with_text=False)]
    ['token0', 'token1', 'backtrack1']
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from backtrack.events import BacktrackEvent, DoneEvent, Event, TokenEvent

SCHEMA_VERSION = 1
KINDS = ("digit", "letter", "space", "punctuation", "other")
_PUNCTUATION = frozenset(string.punctuation)


@dataclass(frozen=True)
class Edit:
    """One change the decoder made to the answer: a token appended at `index`, or deleted."""

    deleted: bool
    index: int
    id: int
    text: str
    logprob: float | None


def token_kind(text: str) -> str:
    """`digit`, `letter`, `space`, `punctuation` or `other` (mixed, empty, non-ASCII marks).

    >>> [token_kind(text) for text in ["7", " 42", "ab", " ", ",", "a1", ""]]
    ['digit', 'digit', 'letter', 'space', 'punctuation', 'other', 'other']
    """
    if not text:
        return "other"
    core = text.strip()
    if not core:
        return "space"
    if core.isdigit():
        return "digit"
    if core.isalpha():
        return "letter"
    if all(char in _PUNCTUATION for char in core):
        return "punctuation"
    return "other"


def edits_from_events(events: Iterable[Event]) -> list[Edit]:
    """The edits an event stream spells, for a stream that held nothing back (no stop
    sequences, no `hold_back_deletable`): each backtrack takes the logprob of the token it
    erases."""
    shown: list[Edit] = []
    edits: list[Edit] = []
    for event in events:
        if isinstance(event, TokenEvent):
            edit = Edit(False, event.index, event.id, event.text, event.logprob)
            shown.append(edit)
            edits.append(edit)
        elif isinstance(event, BacktrackEvent):
            erased = shown.pop()
            edits.append(Edit(True, event.index, erased.id, erased.text, erased.logprob))
    return edits


def edits_from_decoder(
    removed: Sequence[dict[str, Any]],
    removed_logprobs: Sequence[float | None],
    final_ids: Sequence[int],
    final_texts: Sequence[str],
    final_logprobs: Sequence[float | None],
) -> list[Edit]:
    """The decoder's edits from what it keeps: the deletions in order (`DoneEvent.removed_tokens`
    and their logprobs) and the final output.

    A deletion always erases the last token, so the deletion at index i follows exactly as many
    appends as bring the answer to i + 1 tokens: the order of every edit is determined. Each
    append is the token a later deletion erases at its position, or the final token there.
    """
    edits: list[Edit | None] = []
    open_appends: list[int] = []  # edits-list positions of the appends still on the answer
    for removal, logprob in zip(removed, removed_logprobs, strict=True):
        index = int(removal["index"])
        if index < len(open_appends) - 1:
            raise ValueError(f"deletion at {index} with {len(open_appends)} tokens written")
        while len(open_appends) <= index:
            open_appends.append(len(edits))
            edits.append(None)
        erased = Edit(False, index, int(removal["id"]), str(removal["text"]), logprob)
        edits[open_appends.pop()] = erased
        edits.append(Edit(True, index, erased.id, erased.text, logprob))
    if len(open_appends) > len(final_ids):
        raise ValueError(f"{len(open_appends)} tokens left but {len(final_ids)} in the output")
    while len(open_appends) < len(final_ids):
        open_appends.append(len(edits))
        edits.append(None)
    for index, position in enumerate(open_appends):
        edits[position] = Edit(
            False, index, final_ids[index], final_texts[index], final_logprobs[index]
        )
    return [edit for edit in edits if edit is not None]


def _finite(value: float | None) -> float | None:
    return round(value, 5) if value is not None and math.isfinite(value) else None


def event_entries(edits: Iterable[Edit], with_text: bool) -> list[dict[str, Any]]:
    """The record's `events` list: compact dicts, with ids and text only when asked."""
    entries: list[dict[str, Any]] = []
    depth = 0
    for edit in edits:
        entry: dict[str, Any] = {"t": "backtrack" if edit.deleted else "token", "index": edit.index}
        depth = depth + 1 if edit.deleted else 0
        if edit.deleted:
            entry["depth"] = depth
        entry["kind"] = token_kind(edit.text)
        entry["logprob"] = _finite(edit.logprob)
        if with_text:
            entry["id"], entry["text"] = edit.id, edit.text
        entries.append(entry)
    return entries


def generation_record(
    done: DoneEvent, edits: Iterable[Edit], with_text: bool, **fields: Any
) -> dict[str, Any]:
    """One line of the log: the counts of `done`, the edits, and the caller's own `fields`
    (id, source, endpoint, time, ...); with text, the final answer too."""
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **fields}
    record.update(
        prompt_tokens=done.prompt_tokens,
        finish_reason=done.finish_reason,
        generated_tokens=done.generated_tokens,
        sampled_tokens=done.sampled_tokens,
        backtracks=done.backtracks,
        ignored_backtracks=done.ignored_backtracks,
    )
    if with_text:
        record["text"] = done.generated_text
    record["events"] = event_entries(edits, with_text)
    return record
