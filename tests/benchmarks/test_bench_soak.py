"""The soak benchmark's pure logic: its bad inputs, metric parsing, the 429 judge, RSS growth and
the checks (the soak itself runs by name, `make bench-soak`; nothing here is timed)."""

from __future__ import annotations

import json
import random

import pytest

from benchmarks import soak_corpus as corpus
from benchmarks.bench_soak import json_finish_reason, read_frame
from benchmarks.soak_corpus import CAPACITY, Case
from benchmarks.soak_judge import (
    Outcome,
    failed_checks,
    judge_429,
    metric_sum,
    parse_metrics,
    rss_growth,
)

EXPOSITION = """# HELP backtrack_kv_cache_tokens Tokens held
# TYPE backtrack_kv_cache_tokens gauge
backtrack_kv_cache_tokens 0.0
backtrack_requests_total{endpoint="/generate",finish_reason="cancelled"} 3.0
backtrack_requests_total{endpoint="/v1/completions",finish_reason="cancelled"} 2.0
backtrack_requests_total{endpoint="/generate",finish_reason="length"} 7.0
"""

TIMED_OUT_DETAILS = {"finish_reason": "length", "backtrack_finish_reason": "timeout"}


def test_metrics_are_parsed_and_summed_by_label():
    values = parse_metrics(EXPOSITION)
    assert metric_sum(values, "backtrack_kv_cache_tokens") == 0.0
    assert metric_sum(values, "backtrack_requests_total", finish_reason="cancelled") == 5
    assert metric_sum(values, "backtrack_requests_total") == 12
    assert metric_sum(values, "backtrack_missing") == 0


def overloaded(
    running: int, waiting: int, peers: int, opened: float = 10.0, scoring: int = 0, n: int = 1
) -> Outcome:
    body = {"prompt": "1", "n": n}
    case = Case("burst", "POST", "/v1/completions", body, expect=frozenset({200, 429}))
    outcome = Outcome(case, 429)
    outcome.text = (
        f"{running} requests running and {waiting} waiting, {scoring} scoring: every place is taken"
    )
    outcome.opened, outcome.closed, outcome.peak_open_others = opened, opened + 0.1, peers
    return outcome


def test_a_429_is_justified_only_by_a_full_queue_the_client_could_have_filled():
    assert judge_429(overloaded(4, 4, peers=CAPACITY), drops=[]) is None
    assert "fewer than" in judge_429(overloaded(2, 3, peers=CAPACITY), drops=[])
    # the server claims 8 held while the client had 5 open: ghosts hold the places
    assert "at most 5" in judge_429(overloaded(4, 4, peers=5), drops=[])
    # ... unless streams dropped just before could still be held
    assert judge_429(overloaded(4, 4, peers=5), drops=[9.0, 9.5, 10.05]) is None
    assert judge_429(overloaded(4, 4, peers=5), drops=[1.0, 2.0, 3.0]) is not None
    # scoring calls hold places too, and a fan-out request's own choices hold some
    assert judge_429(overloaded(4, 2, peers=CAPACITY, scoring=2), drops=[]) is None
    assert judge_429(overloaded(4, 4, peers=5, n=4), drops=[]) is None
    assert judge_429(overloaded(4, 4, peers=4, n=1), drops=[]) is not None
    no_counts = overloaded(4, 4, peers=8)
    no_counts.text = "busy"
    assert judge_429(no_counts, drops=[]) is not None


def test_rss_growth_compares_the_highest_of_the_first_and_last_windows():
    samples = [(0, 100), (500, 120), (1000, 118), (1500, 119), (2000, 123)]
    assert rss_growth(samples, total=2000, window=1000) == pytest.approx(123 / 120 - 1)
    with pytest.raises(ValueError):
        rss_growth([(0, 100)], total=2000, window=1000)


def passing() -> dict:
    return {
        "requests": 2200,
        "status_5xx": 0,
        "hangs": 0,
        "rss_growth_pct": 1.5,
        "status_429": 12,
        "dropped_streams": 100,
    }


def test_the_checks_pass_clean_figures_and_name_each_failure():
    assert failed_checks(passing()) == []
    bad = {**passing(), "status_5xx": 2, "kv_cache_tokens_at_end": 17.0, "rss_growth_pct": 5.0}
    failures = failed_checks(bad)
    assert len(failures) == 3
    assert any("status_5xx is 2" in line for line in failures)
    assert any("kv_cache_tokens_at_end" in line for line in failures)
    assert any("rss_growth_pct" in line for line in failures)
    assert failed_checks({**passing(), "requests": 1999})
    assert failed_checks({**passing(), "status_429": 0})


@pytest.mark.parametrize("make", corpus.BAD_INPUTS)
def test_every_bad_input_expects_a_4xx_and_builds_a_request(make):
    case = make(random.Random(0))
    assert case.expect and all(400 <= status < 500 for status in case.expect)
    assert not case.generation
    if case.kind.startswith("oversize"):
        assert len(case.raw) > corpus.MAX_REQUEST_BYTES


def test_good_cases_stay_within_the_limits_and_a_quarter_of_streams_drop():
    rng = random.Random(0)
    cases = [corpus.valid_case(rng) for _ in range(2000)]
    streams = [case for case in cases if case.stream]
    dropped = [case for case in streams if case.drop_after is not None]
    assert 0.2 < len(dropped) / len(streams) < 0.3
    assert all(1 <= case.drop_after <= 3 for case in dropped)
    assert {case.path for case in cases} == set(corpus.GENERATION_PATHS)
    for case in cases:
        options = case.body if case.path.startswith("/v1/") else case.body["parameters"]
        assert len(options.get("stop", [])) <= corpus.MAX_STOP_SEQUENCES
        assert options.get("max_backtracks", 0) <= corpus.MAX_BACKTRACKS
        assert 0 <= options.get("seed", 0) < 2**64
        assert case.places <= corpus.MAX_CHOICES
    scoring = [case for case in cases if "logprobs" in case.body]
    assert scoring and any(case.places > 1 for case in scoring)


@pytest.mark.parametrize(
    ("path", "frame"),
    [
        ("/generate_stream", {"generated_text": "z", "details": TIMED_OUT_DETAILS}),
        ("/v1/completions", {"choices": [{"index": 0, "text": "", **TIMED_OUT_DETAILS}]}),
    ],
)
def test_a_timeout_is_read_from_our_reason_beside_the_protocols_length(path, frame):
    """TGI's and OpenAI's `finish_reason` say `length` for a timeout; the soak counts it as one."""
    outcome = Outcome(Case("valid", "POST", path))
    read_frame(path, json.dumps(frame), outcome)
    assert (outcome.finish_reason, outcome.stream_error) == ("timeout", True)
    answer = {"generated_text": "z", "details": TIMED_OUT_DETAILS}
    assert json_finish_reason(json.dumps(answer)) == "timeout"


def test_a_responses_stream_ends_with_its_final_response_object():
    outcome = Outcome(Case("valid", "POST", "/v1/responses", stream=True))
    read_frame("/v1/responses", '{"type": "response.output_text.delta", "delta": "a"}', outcome)
    assert not outcome.complete
    final = {"status": "incomplete", "incomplete_details": {"reason": "timeout"}}
    read_frame(
        "/v1/responses", json.dumps({"type": "response.incomplete", "response": final}), outcome
    )
    assert outcome.complete and outcome.finish_reason == "timeout" and outcome.stream_error


def test_the_edge_checks_pass_clean_figures_and_name_each_failure():
    from benchmarks.soak_edges import edge_failures

    clean = {
        "scoring_flood_slowdown": 2.0,
        "scoring_flood_unexpected_status": 0,
        "slow_readers_engine_busy_after": 0.0,
        "failing_step_false_200": 0,
        "failing_step_hangs": 0,
        "slow_header_closed": 12,
        "slow_header_connections": 12,
        "slow_body_connections": 12,
        "slow_body_closed_with_408": 12,
        "served_beside_slow_senders": True,
        "failing_step_served_before": True,
        "failing_step_unhealthy_after_requests": 3,
        "big_slow_bodies_second_wave_growth_pct": 0.5,
    }
    assert edge_failures(clean) == []
    slow = {**clean, "scoring_flood_slowdown": 3.5, "failing_step_unhealthy_after_requests": None}
    failures = edge_failures(slow)
    assert len(failures) == 2 and "scoring flood" in failures[0] and "/health" in failures[1]
