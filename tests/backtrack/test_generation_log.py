"""The generation record: the decoder's edits rebuilt from what it keeps, and their entries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtrack.generation_log import (
    Edit,
    edits_from_decoder,
    edits_from_events,
    event_entries,
    token_kind,
)
from backtrack.stream import StreamView, VisibleOutput

TEXTS = ["1", "a", " ", ",", "é", "x2", ""]


def simulate(choices: list[int]) -> tuple[list[Edit], list, dict]:
    """Run a decoder's appends and deletions (choice -1: delete when possible) through the
    server's stream view; returns the true edits, the events a client got, the decoder's keep."""
    ids: list[int] = []
    texts: list[str] = []
    logprobs: list[float] = []
    view, events, truth = StreamView(), [], []
    removed: list[dict] = []
    removed_logprobs: list[float] = []
    for step, choice in enumerate(choices):
        if choice < 0 and ids:
            index = len(ids) - 1
            edit = Edit(True, index, ids.pop(), texts.pop(), logprobs.pop())
            removed.append({"id": edit.id, "text": edit.text, "index": index})
            removed_logprobs.append(edit.logprob or 0.0)
            truth.append(edit)
            events += view.on_pop(index, len(removed))
        else:
            token = abs(choice) % len(TEXTS)
            ids.append(token)
            texts.append(TEXTS[token])
            logprobs.append(-0.5 * step)
            truth.append(Edit(False, len(ids) - 1, token, TEXTS[token], -0.5 * step))
        scores = [None] * len(ids)
        events += view.release(VisibleOutput(ids, texts, logprobs, scores), len(ids))
    keep = {
        "removed": removed,
        "removed_logprobs": removed_logprobs,
        "final_ids": ids,
        "final_texts": texts,
        "final_logprobs": logprobs,
    }
    return truth, events, keep


@given(st.lists(st.integers(-3, 6), max_size=40))
def test_the_decoders_keep_and_its_unheld_stream_give_the_same_edits(choices):
    truth, events, keep = simulate(choices)
    assert edits_from_decoder(**keep) == truth
    assert edits_from_events(events) == truth


@given(st.lists(st.integers(-3, 6), max_size=40))
def test_entries_replay_in_order_and_depth_counts_deletions_in_a_row(choices):
    truth, _, keep = simulate(choices)
    entries = event_entries(truth, with_text=True)
    shown: list[str] = []
    in_a_row = 0
    for entry in entries:
        if entry["t"] == "token":
            assert entry["index"] == len(shown)
            shown.append(entry["text"])
            in_a_row = 0
        else:
            assert entry["index"] == len(shown) - 1 and shown.pop() == entry["text"]
            in_a_row += 1
            assert entry["depth"] == in_a_row
    assert shown == keep["final_texts"]
    assert all(not {"id", "text"} & set(e) for e in event_entries(truth, with_text=False))


def test_two_deletions_in_a_row_have_depths_one_and_two():
    removed = [{"id": 2, "text": "b", "index": 1}, {"id": 1, "text": "a", "index": 0}]
    edits = edits_from_decoder(removed, [-1.0, -2.0], [3], ["c"], [-0.1])
    entries = event_entries(edits, with_text=False)
    assert [(e["t"], e["index"], e.get("depth")) for e in entries] == [
        ("token", 0, None),
        ("token", 1, None),
        ("backtrack", 1, 1),
        ("backtrack", 0, 2),
        ("token", 0, None),
    ]
    assert [e["logprob"] for e in entries] == [-2.0, -1.0, -1.0, -2.0, -0.1]


def test_a_deletion_that_is_not_of_the_last_token_is_refused():
    removed = [{"id": 1, "text": "a", "index": 3}, {"id": 2, "text": "b", "index": 1}]
    with pytest.raises(ValueError, match="deletion at 1"):
        edits_from_decoder(removed, [0.0, 0.0], [], [], [])


def test_a_logprob_that_is_not_finite_is_written_as_null():
    (entry,) = event_entries([Edit(False, 0, 1, "a", float("-inf"))], with_text=False)
    assert entry["logprob"] is None


KINDS_OF = {"7": "digit", " 42": "digit", "Ab": "letter", "\n": "space", "?!": "punctuation"}


@pytest.mark.parametrize(("text", "kind"), [*KINDS_OF.items(), ("a1", "other"), ("", "other")])
def test_token_kinds(text, kind):
    assert token_kind(text) == kind
