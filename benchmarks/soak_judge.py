"""The soak's judge: what each request got, and whether the figures of a run hold.

`Outcome` records one request's answer; `Tracker` which good requests were open at once and
when streams were dropped, so `judge_429` can tell a 429 the queue justified from a false one.
`summarise` turns the outcomes, RSS samples and the server's own metrics into the figures, and
`failed_checks` names every figure that does not hold.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from benchmarks.soak_corpus import (
    BURST,
    CAPACITY,
    CONCURRENCY,
    MAX_NEW_TOKENS,
    MAX_QUEUE,
    MAX_RUNNING,
    Case,
)

DROP_GRACE = 2.0
RSS_WINDOW = 1000
MAX_RSS_GROWTH = 0.05
OVERLOADED = re.compile(r"(\d+) requests running and (\d+) waiting, (\d+) scoring")
TERMINAL_FINISH_REASONS = {"error", "timeout", "shutdown"}
"""Finish reasons that mean the server failed the request (nothing here shuts it down)."""


@dataclass
class Outcome:
    case: Case
    status: int | None = None
    """None: no answer (a hang or a transport error)."""
    error: str | None = None
    seconds: float = 0.0
    events: int = 0
    dropped: bool = False
    complete: bool = False
    """The answer ended with its final frame (or was not a stream)."""
    stream_error: bool = False
    finish_reason: str | None = None
    text: str = ""
    opened: float = 0.0
    closed: float = 0.0
    peak_open_others: int = 0
    """Most engine places (choices) the client's other open good requests could hold at once
    while this one was open."""


class Tracker:
    """Which good generation requests are open, and when streams were dropped."""

    def __init__(self) -> None:
        self.open: set[int] = set()
        self.outcomes: dict[int, Outcome] = {}
        self.drops: list[float] = []

    def opened(self, outcome: Outcome) -> None:
        others = sum(self.outcomes[key].case.places for key in self.open)
        outcome.peak_open_others = others
        for key in self.open:
            peer = self.outcomes[key]
            with_this = others - peer.case.places + outcome.case.places
            peer.peak_open_others = max(peer.peak_open_others, with_this)
        self.open.add(id(outcome))
        self.outcomes[id(outcome)] = outcome

    def closed(self, outcome: Outcome) -> None:
        self.open.discard(id(outcome))
        self.outcomes.pop(id(outcome), None)


def count_in_window(times: Iterable[float], start: float, end: float) -> int:
    return sum(1 for moment in times if start <= moment <= end)


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (prometheus_client's own parser)."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_sum(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def judge_429(outcome: Outcome, drops: list[float]) -> str | None:
    """Why a 429 was not justified by a full queue, or None when it was."""
    match = OVERLOADED.search(outcome.text)
    if match is None:
        return "429 without the running/waiting counts"
    held = sum(int(count) for count in match.groups())
    if held < CAPACITY:
        return f"429 with {held} requests held, fewer than {CAPACITY} places"
    dropped = count_in_window(drops, outcome.opened - DROP_GRACE, outcome.closed)
    bound = outcome.peak_open_others + dropped + outcome.case.places - 1  # its own choices
    if held > bound:
        return f"429 with {held} requests held but at most {bound} could be"
    return None


def rss_growth(samples: list[tuple[int, int]], total: int, window: int = RSS_WINDOW) -> float:
    """Highest RSS over the last `window` requests against the highest over the first, minus 1.

    `samples` are (requests answered so far, RSS in kB)."""
    first = [rss for answered, rss in samples if answered <= window]
    last = [rss for answered, rss in samples if answered >= total - window]
    if not first or not last:
        raise ValueError("RSS samples do not cover both windows")
    return max(last) / max(first) - 1


def failed_checks(figures: dict[str, Any]) -> list[str]:
    """The reliability figures that do not hold, one line each (empty: all hold)."""
    failures = []
    zero = (
        "status_5xx",
        "hangs",
        "stream_errors",
        "unexpected_status",
        "false_429",
        "server_timeouts",
        "server_errors",
        "kv_cache_tokens_at_end",
        "kv_cache_slots_at_end",
        "kv_cache_reserved_tokens_at_end",
        "running_requests_at_end",
        "queue_size_at_end",
        "max_residual_between_rounds",
        "server_log_problems",
    )
    for name in zero:
        if figures.get(name, 0) != 0:
            failures.append(f"{name} is {figures[name]}, not 0")
    if figures["requests"] < 2000:
        failures.append(f"requests is {figures['requests']}, fewer than 2000")
    if not figures["rss_growth_pct"] < MAX_RSS_GROWTH * 100:
        failures.append(f"rss_growth_pct is {figures['rss_growth_pct']}, not under 5")
    if figures["status_429"] == 0:
        failures.append("no 429 at all: the bursts never filled the queue")
    if figures["dropped_streams"] == 0:
        failures.append("no stream was dropped")
    return failures


def summarise(
    outcomes: list[Outcome],
    drops: list[float],
    rss: list[tuple[int, int]],
    metrics: list[Sample],
    idle: dict[str, float],
    residuals: list[float],
    seconds: float,
) -> dict[str, Any]:
    statuses = Counter(o.status for o in outcomes)
    streams = [o for o in outcomes if o.case.stream and o.status == 200]
    unexpected = [o for o in outcomes if o.status is not None and o.status not in o.case.expect]
    false_429 = [
        reason for o in outcomes if o.status == 429 and (reason := judge_429(o, drops)) is not None
    ]
    hangs = [o for o in outcomes if o.status is None]
    stream_errors = [
        o
        for o in outcomes
        if o.stream_error
        or (o.status == 200 and o.case.stream and not o.dropped and not o.complete)
        or (o.finish_reason in TERMINAL_FINISH_REASONS)
    ]
    finishes = Counter(o.finish_reason for o in outcomes if o.finish_reason)
    kinds = Counter(o.case.kind for o in outcomes)
    total = len(outcomes)
    growth = rss_growth(rss, total)
    first = max(kb for answered, kb in rss if answered <= RSS_WINDOW)
    last = max(kb for answered, kb in rss if answered >= total - RSS_WINDOW)
    latencies = sorted(o.seconds for o in outcomes if o.status is not None)
    figures: dict[str, Any] = {
        "requests": total,
        "seconds": round(seconds, 1),
        "requests_per_s": round(total / seconds, 1),
        "settings": (
            f"tiny llama 2x64, {MAX_RUNNING} slots + {MAX_QUEUE} queue, "
            f"max_new_tokens {MAX_NEW_TOKENS}, {CONCURRENCY} clients + bursts of {BURST}"
        ),
        "good_generation_requests": kinds["valid"] + kinds["burst"],
        "bad_input_requests": total - kinds["valid"] - kinds["burst"] - kinds["read"],
        "bad_input_kinds": len([k for k in kinds if k not in ("valid", "burst", "read")]),
        "service_reads": kinds["read"],
        "streams": sum(1 for o in outcomes if o.case.stream),
        "streams_answered_200": len(streams),
        "streams_told_to_drop": sum(1 for o in outcomes if o.case.drop_after is not None),
        "dropped_streams": sum(1 for o in outcomes if o.dropped),
        "dropped_share_of_200_streams": round(
            sum(1 for o in outcomes if o.dropped) / max(len(streams), 1), 3
        ),
        "status_2xx": sum(n for s, n in statuses.items() if s is not None and 200 <= s < 300),
        "status_4xx": sum(n for s, n in statuses.items() if s is not None and 400 <= s < 500),
        "status_429": statuses[429],
        "status_429_in_bursts": sum(
            1 for o in outcomes if o.status == 429 and o.case.kind == "burst"
        ),
        "status_5xx": sum(n for s, n in statuses.items() if s is not None and s >= 500),
        "statuses": ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=str)),
        "hangs": len(hangs),
        "hang_examples": "; ".join(f"{o.case.kind} {o.case.path}: {o.error}" for o in hangs[:3]),
        "stream_errors": len(stream_errors),
        "unexpected_status": len(unexpected),
        "unexpected_examples": "; ".join(
            f"{o.case.kind} {o.case.path} -> {o.status} {o.text[:120]}" for o in unexpected[:3]
        ),
        "false_429": len(false_429),
        "false_429_examples": "; ".join(false_429[:3]),
        "finish_reasons": ", ".join(f"{r}: {n}" for r, n in sorted(finishes.items())),
        "server_cancelled": int(
            metric_sum(metrics, "backtrack_requests_total", finish_reason="cancelled")
        ),
        "server_timeouts": int(
            metric_sum(metrics, "backtrack_requests_total", finish_reason="timeout")
        ),
        "server_errors": int(
            metric_sum(metrics, "backtrack_requests_total", finish_reason="error")
        ),
        "server_finished_requests": int(metric_sum(metrics, "backtrack_requests_total")),
        "latency_p50_s": round(latencies[len(latencies) // 2], 4),
        "latency_p99_s": round(latencies[int(len(latencies) * 0.99)], 4),
        "latency_max_s": round(latencies[-1], 3),
        "rss_first_1000_max_mib": round(first / 1024, 1),
        "rss_last_1000_max_mib": round(last / 1024, 1),
        "rss_growth_pct": round(growth * 100, 2),
        "max_residual_between_rounds": max(residuals, default=0.0),
    }
    for name, value in idle.items():
        short = name.removeprefix("backtrack_")
        figures[f"{short}_at_end"] = value
    return figures
