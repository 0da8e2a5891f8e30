"""Where and how a model backtracks, from generation records: the server's or evaluation's.

    make analyze LOG=logs/events.jsonl
    python -m training.analyze logs/events.jsonl* --plot backtracks.png
    python -m training.analyze runs/eval.jsonl --json

Reads the server's event log (setting `event_log`) or evaluation's records (`python -m
training.evaluate --log-events`), one schema (`backtrack.generation_log`), and reports:

* where deletions happen: the answer position of every deleted token, and its kind (digit,
  letter, space, punctuation, other) against how often that kind is written;
* how deep they go: runs of consecutive deletions (depth 2: two tokens erased in a row);
* the mean logprob of the tokens later deleted against the ones kept;
* where the right answer is known (evaluation records, `expected`): false deletions (the
  deleted token was right: the visible text before it plus its own, not empty, is a prefix of
  the answer) and how often the token written after a deletion (or a run of them) is right.

It prints a short report (or, with `--json`, the figures) and writes a PNG: the positions
histogram, the deleted kinds and the depths.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backtrack.generation_log import KINDS, SCHEMA_VERSION


class RecordError(ValueError):
    """A line that is not a generation record this reader knows; the message names the line."""


def read_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every record in the files, in order; blank lines are skipped."""
    records = []
    for path in paths:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise RecordError(f"{path}:{number}: not JSON ({error})") from None
            version = record.get("schema_version") if isinstance(record, dict) else None
            if version != SCHEMA_VERSION:
                raise RecordError(f"{path}:{number}: schema_version {version!r}, not 1")
            records.append(record)
    return records


@dataclass
class Tally:
    """The counts behind the figures, added up record by record."""

    records: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    written: Counter[str] = field(default_factory=Counter)
    """Tokens written, by kind."""
    deleted: Counter[str] = field(default_factory=Counter)
    """Tokens deleted, by kind."""
    positions: Counter[int] = field(default_factory=Counter)
    runs: Counter[int] = field(default_factory=Counter)
    """Runs of consecutive deletions, by length."""
    with_deletions: int = 0
    logprobs: dict[str, list[float]] = field(default_factory=lambda: {"deleted": [], "kept": []})
    judged: Counter[str] = field(default_factory=Counter)

    def add(self, record: dict[str, Any]) -> None:
        self.records += 1
        self.sources[str(record.get("source"))] += 1
        self.finish_reasons[str(record.get("finish_reason"))] += 1
        events = record.get("events", [])
        expected = record.get("expected")
        if not isinstance(expected, str) or not all("text" in event for event in events):
            expected = None  # nothing to judge against
        shown: list[dict[str, Any]] = []
        run = 0  # deletions in a row so far
        for event in events:
            if event["t"] == "backtrack":
                if not shown:
                    raise RecordError(f"record {record.get('id')}: a deletion with nothing shown")
                self._deletion(event, shown, expected)
                run += 1
                continue
            if run:
                self._run_ended(run, event, shown, expected)
                run = 0
            self.written[event["kind"]] += 1
            shown.append(event)
        if run:
            self.runs[run] += 1
        self.with_deletions += any(event["t"] == "backtrack" for event in events)
        for event in shown:
            self._logprob("kept", event)
        if expected is not None:
            self.judged["records"] += 1
            self.judged["exact"] += record.get("text") == expected

    def _deletion(
        self, event: dict[str, Any], shown: list[dict[str, Any]], expected: str | None
    ) -> None:
        erased = shown.pop()
        self.deleted[event["kind"]] += 1
        self.positions[event["index"]] += 1
        self._logprob("deleted", erased)
        if expected is not None:
            self.judged["deletions"] += 1
            self.judged["false_deletions"] += _is_prefix(shown, erased, expected)

    def _run_ended(
        self, run: int, token: dict[str, Any], shown: list[dict[str, Any]], expected: str | None
    ) -> None:
        """`token` is the first written after `run` deletions in a row: is it right?"""
        self.runs[run] += 1
        if expected is not None:
            self.judged["next_tokens"] += 1
            self.judged["correct_next_tokens"] += _is_prefix(shown, token, expected)

    def _logprob(self, which: str, event: dict[str, Any]) -> None:
        if event.get("logprob") is not None:
            self.logprobs[which].append(event["logprob"])


def _is_prefix(shown: list[dict[str, Any]], token: dict[str, Any], expected: str) -> bool:
    """The visible text followed by `token` starts the expected answer: the token is right. A
    token that adds no text (a special token, part of a character) is never right."""
    text = "".join(event["text"] for event in shown) + token["text"]
    return bool(token["text"]) and expected.startswith(text)


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def analyze(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The figures of a set of records (see the module docstring)."""
    tally = Tally()
    for record in records:
        tally.add(record)
    written, deleted = sum(tally.written.values()), sum(tally.deleted.values())
    kinds = [kind for kind in KINDS if tally.written[kind] or tally.deleted[kind]]
    judged = tally.judged
    return {
        "records": tally.records,
        "sources": dict(tally.sources),
        "finish_reasons": dict(tally.finish_reasons),
        "tokens_written": written,
        "deletions": deleted,
        "records_with_deletions": tally.with_deletions,
        "deletions_per_record": _ratio(deleted, tally.records),
        "deletions_per_token": _ratio(deleted, written),
        "positions": dict(sorted(tally.positions.items())),
        "kinds": {
            kind: {
                "written": tally.written[kind],
                "deleted": tally.deleted[kind],
                "deleted_share": _ratio(tally.deleted[kind], tally.written[kind]),
            }
            for kind in kinds
        },
        "depths": dict(sorted(tally.runs.items())),
        "max_depth": max(tally.runs, default=0),
        "mean_logprob": {which: _mean(values) for which, values in tally.logprobs.items()},
        "judged": None
        if not judged["records"]
        else {
            "records": judged["records"],
            "exact_match": _ratio(judged["exact"], judged["records"]),
            "deletions": judged["deletions"],
            "false_deletions": judged["false_deletions"],
            "false_deletion_rate": _ratio(judged["false_deletions"], judged["deletions"]),
            "next_tokens_after_deletion": judged["next_tokens"],
            "correct_next_tokens": judged["correct_next_tokens"],
            "correct_next_rate": _ratio(judged["correct_next_tokens"], judged["next_tokens"]),
        },
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_report(figures: dict[str, Any]) -> str:
    """A few lines a person reads: counts, where, what kind, how deep, how right."""
    sources = ", ".join(f"{count} {name}" for name, count in figures["sources"].items())
    lines = [
        f"{figures['records']} generations ({sources}), {figures['tokens_written']} tokens "
        f"written, {figures['deletions']} deleted ({_percent(figures['deletions_per_token'])}); "
        f"{figures['records_with_deletions']} generations deleted at least once",
    ]
    if figures["positions"]:
        common = sorted(figures["positions"].items(), key=lambda item: -item[1])[:5]
        lines.append("deleted at positions  " + ", ".join(f"{index}: {n}" for index, n in common))
    lines.append(
        "kinds (deleted/written)  "
        + ", ".join(
            f"{kind} {row['deleted']}/{row['written']}" for kind, row in figures["kinds"].items()
        )
    )
    if figures["depths"]:
        depths = ", ".join(f"{depth}: {n}" for depth, n in figures["depths"].items())
        lines.append(f"deletions in a row     {depths} (max depth {figures['max_depth']})")
    means = figures["mean_logprob"]
    if means["deleted"] is not None and means["kept"] is not None:
        lines.append(
            f"mean logprob           deleted {means['deleted']:.3f}, kept {means['kept']:.3f}"
        )
    judged = figures["judged"]
    if judged is not None:
        lines += [
            f"judged against the expected answer ({judged['records']} generations, exact match "
            f"{_percent(judged['exact_match'])}):",
            f"  false deletions      {judged['false_deletions']} of {judged['deletions']} "
            f"({_percent(judged['false_deletion_rate'])}): the deleted token was right",
            f"  right after deleting {judged['correct_next_tokens']} of "
            f"{judged['next_tokens_after_deletion']} ({_percent(judged['correct_next_rate'])}): "
            "the next token written starts the right answer",
        ]
    return "\n".join(lines)


def save_plot(figures: dict[str, Any], path: Path) -> Path:
    """Three bar charts: deletions by answer position, by token kind, by depth."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a training host
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [
        (figures["positions"], "position in the answer (token index)", "deletions by position"),
        (
            {kind: row["deleted"] for kind, row in figures["kinds"].items()},
            "kind of the deleted token",
            "deletions by kind",
        ),
        (figures["depths"], "deletions in a row", "depth"),
    ]
    for axis, (counts, xlabel, title) in zip(axes, panels, strict=True):
        axis.bar(list(counts), list(counts.values()), color="tab:red")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel(xlabel)
        axis.set_ylabel("deletions")
        axis.set_title(title)
    figure.suptitle(f"{figures['deletions']} deletions in {figures['records']} generations")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Backtrack patterns in generation records.")
    parser.add_argument("logs", nargs="+", type=Path, help="JSONL files (rotated ones too)")
    parser.add_argument("--plot", type=Path, help="PNG to write (default: <first log>.png)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--by", metavar="FIELD", help="figures per value of a record field too (run, endpoint)"
    )
    args = parser.parse_args(argv)
    try:
        records = read_records(args.logs)
        figures = analyze(records)
        groups = {name: analyze(part) for name, part in grouped(records, args.by).items()}
    except (OSError, RecordError) as error:
        parser.error(str(error))
    if not records:
        parser.error(f"no records in {', '.join(map(str, args.logs))}")
    plot = save_plot(figures, args.plot or args.logs[0].with_name(args.logs[0].name + ".png"))
    if args.json:
        json.dump({**figures, "groups": groups} if args.by else figures, sys.stdout, indent=2)
        print()
        return
    print(format_report(figures))
    for name, part in groups.items():
        print(f"\n{args.by} {name}:\n{format_report(part)}")
    print(f"plot written to {plot}")


def grouped(records: list[dict[str, Any]], by: str | None) -> dict[str, list[dict[str, Any]]]:
    """The records per value of field `by` (none without it), in the order values first occur."""
    groups: dict[str, list[dict[str, Any]]] = {}
    if by is None:
        return groups
    for record in records:
        groups.setdefault(json.dumps(record.get(by), sort_keys=True), []).append(record)
    return groups


if __name__ == "__main__":
    main()
