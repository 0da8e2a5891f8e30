from __future__ import annotations

import pytest

from backtrack.detokenize import IncrementalDetokenizer
from backtrack.events import BacktrackEvent, DoneEvent, TokenEvent, event_payload, replay


def test_replay_appends_and_pops_in_order():
    events = [
        TokenEvent(0, 5, "a", -0.1),
        TokenEvent(1, 6, "b", -0.2),
        BacktrackEvent(1, 6, "b", 1),
        TokenEvent(1, 7, "c", -0.3),
        DoneEvent("ac", "eos", 2, 1, 3),
    ]
    assert replay(events) == "ac"


def test_replay_rejects_an_out_of_order_stream():
    with pytest.raises(ValueError, match="index"):
        replay([TokenEvent(1, 5, "a", 0.0)])


def test_payload_matches_the_documented_sse_fields():
    assert event_payload(BacktrackEvent(7, 1234, " Paris", 1)) == {
        "index": 7,
        "removed_id": 1234,
        "removed_text": " Paris",
        "backtracks": 1,
    }
    assert set(event_payload(TokenEvent(7, 1234, " Paris", -0.12))) == {
        "index",
        "id",
        "text",
        "logprob",
    }


def test_detokenizer_pop_returns_what_push_added(char_tokenizer):
    detok = IncrementalDetokenizer(char_tokenizer)
    ids = char_tokenizer.encode("12 + 3")
    texts = [detok.push(token) for token in ids]
    assert detok.text == "12 + 3" == "".join(texts)
    assert detok.pop() == (ids[-1], "3")
    assert detok.text == "12 + "
