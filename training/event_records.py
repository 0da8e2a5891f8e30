"""Evaluation's generation records (`--log-events`): one JSON line per decoded problem.

    python -m training.evaluate --checkpoint checkpoints/default --log-events runs/eval.jsonl
    python -m training.analyze runs/eval.jsonl

The same schema as the server's event log (`backtrack.generation_log`), always with text, plus
the problem's `expected` answer, so `training.analyze` can judge every deletion. Only the runs
that may backtrack are written (plain decoding deletes nothing).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from backtrack.events import DoneEvent, Event
from backtrack.generation_log import edits_from_events, generation_record
from training.tasks import Problem


class EvalEventLog:
    """Appends evaluation records to one file, opened for the whole evaluation."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = path.open("w")
        self.written = 0

    def write(self, index: int, problem: Problem, events: list[Event], run: dict[str, Any]) -> None:
        """One problem's record; `events` come from the batch decoder, which holds nothing back
        (no stop sequences in evaluation), so they are exactly the decoder's edits."""
        done = events[-1]
        if not isinstance(done, DoneEvent):
            raise ValueError(f"problem {index} did not finish: its last event is {done!r}")
        fields = {
            "id": uuid.uuid4().hex,
            "source": "evaluate",
            "endpoint": "evaluate",
            "time": round(time.time(), 3),
            "mode": run.get("mode"),
            "backtrack_policy": run.get("backtrack_policy"),
            "run": run,
            "problem": index,
            "prompt": problem.prompt,
            "expected": problem.response,
        }
        record = generation_record(done, edits_from_events(events), True, **fields)
        self.file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.written += 1

    def close(self) -> None:
        self.file.close()
