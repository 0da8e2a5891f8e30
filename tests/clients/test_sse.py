"""The SSE parser against recorded streams, split at every place a network may split them."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from backtrack.events import replay
from clients.events import StreamDecoder, parse_event
from clients.sse import ServerSentEvent, SSEParser, iter_events
from tests.clients.conftest import to_sse


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[start:end] for start, end in itertools.pairwise(points)]


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_any_chunking_gives_the_recorded_events_and_final_text(recorded_events, cuts, newline):
    stream = to_sse(recorded_events, newline)
    decoder = StreamDecoder(200)
    updates = [decoder.on_message(message) for message in iter_events(split(stream, cuts))]
    assert [update.event.kind for update in updates] == [event.kind for event in recorded_events]
    done = recorded_events[-1]
    assert updates[-1].text == done.generated_text == replay(recorded_events)
    assert [update.text for update in updates[:-1]] == [
        replay(recorded_events[: number + 1]) for number in range(len(recorded_events) - 1)
    ]


def test_typed_events_carry_the_payload_fields(recorded_events):
    messages = list(iter_events([to_sse(recorded_events)]))
    parsed = [parse_event(message) for message in messages]
    backtrack = next(event for event in parsed if event.kind == "backtrack")
    original = next(event for event in recorded_events if event.kind == "backtrack")
    assert (backtrack.index, backtrack.removed_id, backtrack.removed_text) == (
        original.index,
        original.removed_id,
        original.removed_text,
    )
    assert parsed[-1].removed_tokens == recorded_events[-1].removed_tokens


def test_multibyte_characters_split_across_chunks():
    data = 'event: token\ndata: {"text": "Paris é 東京"}\n\n'.encode()
    cut = data.index("東".encode()) + 1
    messages = list(iter_events([data[:cut], data[cut:]]))
    assert messages == [ServerSentEvent("token", '{"text": "Paris é 東京"}')]


def test_comments_multiline_data_and_defaults():
    parser = SSEParser()
    data = b"\xef\xbb\xbf: keep-alive\n\ndata: a\ndata:b\nid: 7\nretry: 50\n\nevent: x\n\n"
    assert parser.feed(data) == [ServerSentEvent("message", "a\nb", "7", 50)]


def test_an_event_without_its_blank_line_is_not_dispatched():
    parser = SSEParser()
    assert parser.feed(b'event: done\ndata: {"generated_text": ""}\n') == []
    assert parser.feed(b"\r\n")[0].event == "done"
