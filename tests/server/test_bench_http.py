"""The HTTP benchmark runs end to end (scaled down) and reports both sides and their ratio."""

from __future__ import annotations

from benchmarks import bench_http


def test_benchmark_reports_the_ratio_and_ttft_overhead(monkeypatch):
    monkeypatch.setattr(bench_http, "NEW_TOKENS", 12)
    monkeypatch.setattr(bench_http, "REPEATS", 1)
    monkeypatch.setattr(bench_http, "HIDDEN", 64)
    monkeypatch.setattr(bench_http, "LAYERS", 1)
    figures = bench_http.run()
    assert figures["tokens_per_stream"] == 12
    assert figures["inprocess_tokens_per_s"] > 0 and figures["http_sse_tokens_per_s"] > 0
    ratio = figures["http_sse_tokens_per_s"] / figures["inprocess_tokens_per_s"]
    assert abs(figures["http_vs_inprocess_ratio"] - ratio) < 0.01
    assert "http_ttft_overhead_ms" in figures
