"""The opt-in event log (setting `event_log`): one JSON line per finished request.

    python -m server --checkpoint checkpoints/default --event-log logs/events.jsonl
    python -m training.analyze logs/events.jsonl*

The engine's worker only copies a finished job's output into a queue (`EventLog.capture`, a few
list copies); a writer thread builds the record (`backtrack.generation_log`), serialises it and
appends it, so a slow disk never slows a step and a failed write never fails a request (it is
logged, and so is a record dropped because the queue is full). The file is rotated like
`logging.handlers.RotatingFileHandler` does (`events.jsonl` -> `events.jsonl.1` -> ... up to
`event_log_backups`), but only ever between whole lines and never into an empty backup.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backtrack.events import DoneEvent
from backtrack.generation_log import edits_from_decoder, generation_record

if TYPE_CHECKING:  # the settings import this module before torch is loaded
    from transformers import PreTrainedTokenizerBase

    from server.jobs import Job
    from server.settings import Settings

log = logging.getLogger(__name__)
QUEUE_SIZE = 10_000
"""Finished requests waiting for the writer; beyond it records are dropped (and counted)."""


def unwritable(path: Path) -> str | None:
    """Why the event log cannot be written at `path`, or None: checked with the settings, so
    a bad path stops start-up naming `event_log` instead of failing the first request."""
    if path.is_dir():
        return f"{path} is a directory; give a file path"
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return f"cannot write {path}: the directory {parent} does not exist"
    if path.exists() and not os.access(path, os.W_OK):
        return f"cannot write {path}: the file is not writable"
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write {path}: the directory {parent} is not writable"
    return None


class RotatingLines:
    """Appends lines to `path`; before a line would take the file past `max_bytes` the file
    moves to `path.1` (`.1` to `.2`, ... the oldest beyond `backups` goes)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.file = path.open("ab")

    def write(self, line: str) -> None:
        data = (line + "\n").encode()
        size = self.file.tell()
        if size > 0 and size + len(data) > self.max_bytes:
            self._rotate()
        self.file.write(data)
        self.file.flush()

    def numbered(self, number: int) -> Path:
        """The file `number` rotations old (0: the one written now)."""
        return self.path.with_name(f"{self.path.name}.{number}") if number else self.path

    def _rotate(self) -> None:
        self.file.close()
        for number in range(self.backups, 0, -1):
            if self.numbered(number - 1).exists():
                os.replace(self.numbered(number - 1), self.numbered(number))
        self.path.unlink(missing_ok=True)  # no backups kept: the log starts over
        self.file = self.path.open("ab")

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class Finished:
    """A finished job's output as the worker saw it (copies: the writer reads them later)."""

    done: DoneEvent
    endpoint: str
    prompt_ids: list[int]
    removed: list[dict[str, Any]]
    removed_logprobs: list[float]
    ids: list[int]
    texts: list[str]
    logprobs: list[float]
    mode: str
    backtrack_policy: str
    elapsed: float
    finished_at: float


class EventLog:
    """A queue and the thread that writes its records; `capture` is the engine's hook."""

    def __init__(
        self,
        lines: RotatingLines,
        with_text: bool,
        decode: Callable[[list[int]], str] | None = None,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.lines, self.with_text, self.decode = lines, with_text, decode
        self.dropped = 0
        self._queue: queue.Queue[Finished | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._write_all, name="event-log", daemon=True)
        self._thread.start()

    def capture(self, job: Job, done: DoneEvent) -> None:
        """Hand a finished job to the writer (engine worker thread); never raises, never waits."""
        try:
            self._queue.put_nowait(_finished(job, done))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("event log behind: %d records dropped so far", self.dropped)
        except Exception:
            log.exception("event log: could not capture a finished request")

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        self._queue.put(None)
        self._thread.join(timeout)
        self.lines.close()

    def _write_all(self) -> None:
        while (finished := self._queue.get()) is not None:
            try:
                self.lines.write(json.dumps(self.record(finished), separators=(",", ":")))
            except Exception:
                log.exception("event log: writing a record failed")

    def record(self, finished: Finished) -> dict[str, Any]:
        """The JSON record of one finished request (`backtrack.generation_log`)."""
        edits = edits_from_decoder(
            finished.removed,
            finished.removed_logprobs,
            finished.ids,
            finished.texts,
            finished.logprobs,
        )
        fields: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "source": "server",
            "endpoint": finished.endpoint,
            "time": round(finished.finished_at, 3),
            "elapsed_s": round(finished.elapsed, 4),
            "mode": finished.mode,
            "backtrack_policy": finished.backtrack_policy,
        }
        if self.with_text:
            prompt = self.decode(finished.prompt_ids) if self.decode else None
            fields.update(prompt=prompt, prompt_ids=finished.prompt_ids)
        return generation_record(finished.done, edits, self.with_text, **fields)


def _finished(job: Job, done: DoneEvent) -> Finished:
    row = job.row
    counters = row.counters if row is not None else None
    return Finished(
        done=done,
        endpoint=job.request.endpoint,
        prompt_ids=list(job.request.prompt_ids),
        removed=list(counters.removed) if counters else [],
        removed_logprobs=list(counters.removed_logprobs) if counters else [],
        ids=list(row.detok.ids) if row else [],
        texts=list(row.detok.texts) if row else [],
        logprobs=list(row.logprobs) if row else [],
        mode=job.request.params.mode,
        backtrack_policy=job.request.params.backtrack_policy,
        elapsed=time.monotonic() - job.arrival,
        finished_at=time.time(),
    )


def open_event_log(settings: Settings, tokenizer: PreTrainedTokenizerBase) -> EventLog | None:
    """The event log the settings ask for, or None when `event_log` is unset. With prompts, the
    writer decodes them with its own copy of the tokenizer (a Rust tokenizer used from two
    threads at once can raise "Already borrowed")."""
    if settings.event_log is None:
        return None
    from backtrack.detokenize import decoded

    lines = RotatingLines(
        settings.event_log, settings.event_log_max_bytes, settings.event_log_backups
    )
    decode = partial(decoded, copy.deepcopy(tokenizer)) if settings.event_log_prompts else None
    return EventLog(lines, settings.event_log_prompts, decode)
