"""Client fixtures: streams recorded from the real decoder, and the real server on a checkpoint
that backtracks at known places (the server tests' scripted checkpoint)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from backtrack.decoder import Sequence
from backtrack.events import Event, event_payload
from backtrack.params import GenerationParams
from server.process import ServerHandle, running_server
from tests.server.conftest import SCRIPT, save_scripted_checkpoint

API_KEY = "client-test-key"


def record_events(model, tokenizer, backtrack_id: int) -> list[Event]:
    """A real generation with deletions: three tokens, one erased, two more, two erased, to the end.

    The rewinds are driven through `Sequence.backtrack()`, which honours every rule a
    model-chosen BT does, so the events are exactly what the server would stream.
    """
    prompt_ids = tokenizer.encode("123+456=")
    sequence = Sequence(
        model, tokenizer, backtrack_id, prompt_ids, GenerationParams(max_new_tokens=12)
    )
    events: list[Event] = []
    for action in ["step"] * 3 + ["backtrack"] + ["step"] * 2 + ["backtrack"] * 2:
        produced = sequence.step() if action == "step" else sequence.backtrack()
        events.extend(produced or [])
    while not sequence.finished:
        events.extend(sequence.step())
    return events


def to_sse(events: list[Event], newline: str = "\n") -> bytes:
    """The native stream's bytes for `events`, framed as the server frames them."""
    frames = [
        f"event: {event.kind}{newline}data: {json.dumps(event_payload(event))}{newline}{newline}"
        for event in events
    ]
    return "".join(frames).encode()


@pytest.fixture(scope="session")
def recorded_events(tiny_model, char_tokenizer, backtrack_id) -> list[Event]:
    events = record_events(tiny_model, char_tokenizer, backtrack_id)
    assert sum(event.kind == "backtrack" for event in events) == 3
    return events


@pytest.fixture(scope="session")
def backtracking_checkpoint_dir(tmp_path_factory) -> Path:
    """A real checkpoint whose greedy answer to `1+1=` deletes `3` and `x` on its way to `2 ok`."""
    return save_scripted_checkpoint(tmp_path_factory.mktemp("backtracking-checkpoint"), SCRIPT)


@pytest.fixture(scope="session")
def live_server(backtracking_checkpoint_dir) -> Iterator[ServerHandle]:
    """The real server process on the backtracking checkpoint, guarded by an API key."""
    with running_server(
        backtracking_checkpoint_dir, api_key=API_KEY, max_new_tokens=4000
    ) as handle:
        yield handle
