"""The HTTP benchmark runs end to end (scaled down) through `python -m benchmarks` and writes
its figures: both sides streamed the same tokens, and the ratio is the one of the rates."""

from __future__ import annotations

import json
import sys

import benchmarks.__main__ as runner
from benchmarks import bench_http


def test_benchmark_writes_both_sides_and_their_ratio(monkeypatch, tmp_path):
    monkeypatch.setattr(bench_http, "NEW_TOKENS", 12)
    monkeypatch.setattr(bench_http, "REPEATS", 1)
    monkeypatch.setattr(bench_http, "HIDDEN", 64)
    monkeypatch.setattr(bench_http, "LAYERS", 1)
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["benchmarks", "bench_http"])
    runner.main()
    figures = json.loads((tmp_path / "bench_http.json").read_text())
    assert figures["tokens_per_stream"] == 12  # token events parsed off the wire, not lines
    assert figures["inprocess_tokens_per_s"] > 0 and figures["http_sse_tokens_per_s"] > 0
    ratio = figures["http_sse_tokens_per_s"] / figures["inprocess_tokens_per_s"]
    assert abs(figures["http_vs_inprocess_ratio"] - ratio) < 0.01
    assert figures["http_ttft_ms"] > 0
    overhead = figures["http_ttft_ms"] - figures["inprocess_ttft_ms"]
    assert abs(figures["http_ttft_overhead_ms"] - overhead) < 0.02
