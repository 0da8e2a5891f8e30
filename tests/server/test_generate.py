"""POST /generate on the real server process: JSON and the native SSE stream with backtracks."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from backtrack.events import BacktrackEvent, TokenEvent, replay
from tests.server.conftest import (
    API_KEY,
    EOS_FIRST_PROMPT,
    EXPECTED_REMOVED,
    EXPECTED_TEXT,
    PROMPT,
)
from tests.server.sse import stream_events


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def as_events(stream) -> list:
    """Rebuild the decoder's event objects from the wire, to replay them."""
    kinds = {"token": TokenEvent, "backtrack": BacktrackEvent}
    return [kinds[e.event](**e.json()) for e in stream if e.event in kinds]


def test_json_answer_has_text_after_deletions_and_details(client):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20, "details": True}}
    answer = client.post("/generate", json=body).json()
    assert answer["generated_text"] == EXPECTED_TEXT
    details = answer["details"]
    assert details["finish_reason"] == "eos_token"
    assert details["backtracks"] == 2
    assert [t["text"] for t in details["deleted_tokens"]] == EXPECTED_REMOVED
    assert "".join(t["text"] for t in details["tokens"]) == EXPECTED_TEXT
    assert details["generated_tokens"] == len(EXPECTED_TEXT)


def test_json_answer_without_details_is_only_the_text(client):
    answer = client.post("/generate", json={"inputs": PROMPT}).json()
    assert answer == {"generated_text": EXPECTED_TEXT}


def test_stream_shows_backtracks_and_replays_to_the_final_text(client):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 20}, "stream": True}
    stream = stream_events(client, "/generate", body)
    names = [event.event for event in stream]
    assert names == ["token", "backtrack", "token", "token", "backtrack"] + ["token"] * 3 + ["done"]
    backtracks = [e.json() for e in stream if e.event == "backtrack"]
    assert [b["removed_text"] for b in backtracks] == EXPECTED_REMOVED
    assert [b["backtracks"] for b in backtracks] == [1, 2]
    done = stream[-1].json()
    assert done["finish_reason"] == "eos"
    assert done["backtracks"] == 2
    assert replay(as_events(stream)) == done["generated_text"] == EXPECTED_TEXT


def test_hold_back_never_streams_a_deleted_token(client):
    parameters = {"max_new_tokens": 20, "hold_back_deletable": True}
    stream = stream_events(
        client, "/generate", {"inputs": PROMPT, "parameters": parameters, "stream": True}
    )
    assert "backtrack" not in [e.event for e in stream]
    assert "".join(e.json()["text"] for e in stream if e.event == "token") == EXPECTED_TEXT
    assert stream[-1].json()["backtracks"] == 2


def test_stop_sequence_ends_the_text_before_it(client):
    body = {"inputs": PROMPT, "parameters": {"stop": [" o"], "details": True}}
    answer = client.post("/generate", json=body).json()
    assert answer["generated_text"] == "2"
    assert answer["details"]["finish_reason"] == "stop_sequence"


def test_no_backtracking_keeps_the_first_choice(client):
    body = {"inputs": PROMPT, "parameters": {"backtrack_policy": "never", "max_new_tokens": 3}}
    assert client.post("/generate", json=body).json()["generated_text"] == "3"


def test_a_spent_deletion_budget_switches_backtracking_off_and_the_answer_goes_on(client):
    body = {"inputs": PROMPT, "parameters": {"max_backtracks": 1, "details": True}}
    answer = client.post("/generate", json=body).json()
    # "3" is deleted, the budget is spent; after "x" the model wants BT, then EOS: EOS it is
    assert answer["generated_text"] == "2x"
    details = answer["details"]
    assert (details["finish_reason"], details["backtracks"]) == ("eos_token", 1)
    assert details["backtrack_finish_reason"] == "eos"
    assert details["backtrack_budget_exhausted"] is True
    plain = {"inputs": PROMPT, "parameters": {"details": True}}
    assert (
        client.post("/generate", json=plain).json()["details"]["backtrack_budget_exhausted"]
        is False
    )


def test_the_native_done_event_says_the_budget_ran_out(client):
    parameters = {"max_backtracks": 1, "ignore_eos": True, "max_new_tokens": 5}
    stream = stream_events(
        client, "/generate", {"inputs": PROMPT, "parameters": parameters, "stream": True}
    )
    done = stream[-1].json()
    assert [e.event for e in stream].count("backtrack") == 1
    assert (done["finish_reason"], done["generated_tokens"]) == ("length", 5)
    assert done["generated_text"].startswith("2x")
    assert done["backtrack_budget_exhausted"] is True


def test_ignore_eos_writes_on_after_the_answer_instead_of_deleting_it(client):
    """After `hi` the model wants EOS, then BT: barring EOS must not hand the step to BT."""
    parameters = {"max_new_tokens": 6, "ignore_eos": True, "details": True}
    answer = client.post(
        "/generate", json={"inputs": EOS_FIRST_PROMPT, "parameters": parameters}
    ).json()
    assert answer["generated_text"] == "hi!!!!"
    assert (answer["details"]["finish_reason"], answer["details"]["backtracks"]) == ("length", 0)
    parameters = {"min_tokens": 4, "details": True}
    answer = client.post(
        "/generate", json={"inputs": EOS_FIRST_PROMPT, "parameters": parameters}
    ).json()
    assert answer["generated_text"] == "hi!!"
    assert answer["details"]["finish_reason"] == "eos_token"


def test_keep_mode_streams_events_that_replay_to_its_text(client):
    body = {"inputs": PROMPT, "parameters": {"mode": "keep", "max_new_tokens": 6}, "stream": True}
    stream = stream_events(client, "/generate", body)
    assert "backtrack" in [e.event for e in stream]
    assert replay(as_events(stream)) == stream[-1].json()["generated_text"]


def test_seeded_sampling_is_reproducible(client):
    parameters = {"do_sample": True, "temperature": 5.0, "seed": 7, "max_new_tokens": 12}
    body = {"inputs": "ab", "parameters": parameters}
    first = client.post("/generate", json=body).json()["generated_text"]
    assert client.post("/generate", json=body).json()["generated_text"] == first


@pytest.mark.parametrize("seed", range(6))
def test_sampled_streams_replay_to_their_final_text(client, seed):
    parameters = {
        "do_sample": True,
        "temperature": 3.0,
        "backtrack_policy": "sample",
        "seed": seed,
        "max_new_tokens": 30,
    }
    stream = stream_events(
        client, "/generate", {"inputs": PROMPT, "parameters": parameters, "stream": True}
    )
    done = stream[-1].json()
    assert replay(as_events(stream)) == done["generated_text"]
    shown = sum(1 for event in stream if event.event == "backtrack")
    assert shown == done["backtracks"]
