"""The event log (`event_log`): one JSON line per finished request, written by the real server.

The scripted checkpoint answers `1+1=` as `3`, BT, `2`, `x`, BT, ` `, `o`, `k`, EOS: the log must
hold those edits whichever route asked, even one that never shows its client a deletion.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from backtrack.events import DoneEvent
from backtrack.params import GenerationParams
from server.event_log import EventLog, RotatingLines
from server.jobs import GenerationRequest, Job, nothing_kept
from server.process import REPO_ROOT, running_server
from server.settings import SettingsError, load_settings
from tests.server.conftest import EXPECTED_TEXT, LOOP_PROMPT, MODEL_ID, PROMPT
from tests.server.sse import stream_events

EXPECTED_EVENTS = [
    {"t": "token", "index": 0, "kind": "digit"},
    {"t": "backtrack", "index": 0, "depth": 1, "kind": "digit"},
    {"t": "token", "index": 0, "kind": "digit"},
    {"t": "token", "index": 1, "kind": "letter"},
    {"t": "backtrack", "index": 1, "depth": 1, "kind": "letter"},
    {"t": "token", "index": 1, "kind": "space"},
    {"t": "token", "index": 2, "kind": "letter"},
    {"t": "token", "index": 3, "kind": "letter"},
]
"""What the decoder does on `1+1=`, as the log writes it without text."""


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def plain_log(scripted_checkpoint_dir, tmp_path_factory) -> tuple[list[dict], list[dict], dict]:
    """Three requests on a server logging without text: (records, their answers, /info)."""
    path = tmp_path_factory.mktemp("event-log") / "events.jsonl"
    with running_server(scripted_checkpoint_dir, model_id=MODEL_ID, event_log=path) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            details = {"max_new_tokens": 20, "details": True}
            native = client.post("/generate", json={"inputs": PROMPT, "parameters": details})
            streamed = stream_events(
                client, "/generate", {"inputs": PROMPT, "stream": True, "parameters": details}
            )
            body = {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": 20}
            completion = client.post("/v1/completions", json=body)
            info = client.get("/info").json()
        answers = [native.json(), streamed[-1].json(), completion.json()]
        server.terminate()  # the log is complete once the server has stopped
    return read_lines(path), answers, info


def without_logprobs(events: list[dict]) -> list[dict]:
    return [{key: value for key, value in e.items() if key != "logprob"} for e in events]


def test_each_request_is_one_line_holding_the_decoders_edits(plain_log):
    records, answers, _ = plain_log
    assert [record["endpoint"] for record in records] == [
        "/generate",
        "/generate",
        "/v1/completions",
    ]
    for record in records:
        assert record["schema_version"] == 1
        assert without_logprobs(record["events"]) == EXPECTED_EVENTS
        assert all(isinstance(event["logprob"], float) for event in record["events"])
        assert record["finish_reason"] == "eos"
        assert (record["generated_tokens"], record["backtracks"]) == (4, 2)
        assert record["sampled_tokens"] == 7  # 3, 2, x, space, o, k and EOS
        assert record["prompt_tokens"] == len(PROMPT)
    assert records[0]["backtracks"] == answers[0]["details"]["backtracks"]
    assert records[1]["sampled_tokens"] == answers[1]["sampled_tokens"]
    assert answers[2]["choices"][0]["text"] == EXPECTED_TEXT  # its client saw no deletion
    assert len({record["id"] for record in records}) == 3


def test_a_deleted_tokens_logprob_is_the_one_it_was_written_with(plain_log):
    events = plain_log[0][0]["events"]
    assert events[1]["logprob"] == events[0]["logprob"]
    assert events[4]["logprob"] == events[3]["logprob"]


def test_without_event_log_prompts_no_text_and_no_token_id_is_written(plain_log):
    records, _, info = plain_log
    for record in records:
        assert not {"prompt", "prompt_ids", "text"} & set(record)
        assert all(not {"id", "text"} & set(event) for event in record["events"])
        assert PROMPT not in json.dumps(record) and EXPECTED_TEXT not in json.dumps(record)
    assert (info["event_log"], info["event_log_prompts"]) == (True, False)


@pytest.fixture(scope="module")
def rotated_log(scripted_checkpoint_dir, tmp_path_factory) -> Path:
    """Four requests on a server logging text, rotating at every line, two backups kept."""
    path = tmp_path_factory.mktemp("rotated-log") / "events.jsonl"
    settings = {"event_log_prompts": True, "event_log_max_bytes": 1, "event_log_backups": 2}
    with running_server(scripted_checkpoint_dir, event_log=path, **settings) as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            client.post("/generate", json={"inputs": PROMPT})
            for tokens in (2, 3, 4):
                body = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": tokens}}
                client.post("/generate", json=body)
        server.terminate()
    return path


def test_with_event_log_prompts_the_text_and_ids_are_written(rotated_log):
    (newest,) = read_lines(rotated_log)
    assert newest["prompt"].endswith(LOOP_PROMPT) and newest["text"] == "zzzz"
    assert len(newest["prompt_ids"]) == newest["prompt_tokens"]
    assert [event["text"] for event in newest["events"]] == ["z"] * 4
    assert all(isinstance(event["id"], int) for event in newest["events"])


def test_the_log_rotates_at_its_size_and_keeps_its_backups(rotated_log):
    files = sorted(path.name for path in rotated_log.parent.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    lengths = [
        [record["generated_tokens"] for record in read_lines(rotated_log.with_name(name))]
        for name in files
    ]
    assert lengths == [[4], [3], [2]]  # newest first; the first request's line is gone


def test_rotation_never_splits_a_line_nor_passes_the_size_with_room(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = RotatingLines(path, max_bytes=20, backups=1)
    for text in ["a" * 8, "b" * 8, "c" * 30, "d" * 3]:
        lines.write(text)
    lines.close()
    assert path.read_text() == "ddd\n"
    assert path.with_name("log.jsonl.1").read_text() == "c" * 30 + "\n"  # alone: too long


@pytest.mark.parametrize("kind", ["missing directory", "a directory"])
def test_an_unwritable_event_log_stops_start_up_naming_it(tmp_path, kind):
    target = tmp_path / "nowhere" / "events.jsonl" if kind == "missing directory" else tmp_path
    with pytest.raises(SettingsError, match="event_log"):
        load_settings(["--event-log", str(target)])
    result = subprocess.run(
        [sys.executable, "-m", "server", "--event-log", str(target)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "event_log" in result.stderr


class GatedLines:
    """Lines that wait for the test to open the gate: a disk slower than the engine."""

    def __init__(self) -> None:
        self.gate, self.lines = threading.Event(), []

    def write(self, line: str) -> None:
        self.gate.wait(30)
        self.lines.append(json.loads(line))

    def close(self) -> None:
        pass


def finished_job(tokens: int) -> Job:
    request = GenerationRequest([1, 2, 3], GenerationParams(max_new_tokens=tokens), "/generate")
    return Job(request, stream=None, reserved_tokens=3)  # type: ignore[arg-type]


def test_a_full_queue_drops_records_instead_of_waiting_and_a_bad_job_never_raises():
    lines = GatedLines()
    log = EventLog(lines, with_text=False, queue_size=1)  # type: ignore[arg-type]
    for tokens in range(1, 4):
        log.capture(finished_job(tokens), nothing_kept(finished_job(tokens).request, "eos"))
    log.capture(object(), DoneEvent("", "eos", 0, 0))  # type: ignore[arg-type]
    assert log.dropped >= 1  # the writer holds one record, the queue one: the third waits not
    lines.gate.set()
    log.close()
    assert len(lines.lines) == 3 - log.dropped
    assert all(line["events"] == [] and line["prompt_tokens"] == 3 for line in lines.lines)
