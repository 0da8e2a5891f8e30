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


def _byte_level_tokenizer():
    """A byte-level BPE trained on ASCII only, so every accented letter splits into 2 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["hello world, the cafe is open"] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def test_detokenizer_never_shows_half_a_character_and_pops_back():
    tokenizer = _byte_level_tokenizer()
    text = "café über naïve ok"
    ids = tokenizer.encode(text)
    assert len(ids) > len(tokenizer.encode("cafe uber naive ok"))  # accents really split
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(token) for token in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    while detok.ids:
        detok.pop()
        assert detok.text == tokenizer.decode(
            detok.ids
        ) or detok.text + "\ufffd" == tokenizer.decode(detok.ids)
