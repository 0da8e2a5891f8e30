"""The concurrency benchmark runs end to end, scaled down, against this server."""

from __future__ import annotations

from benchmarks import bench_concurrency


def test_scaled_down_run_streams_every_token_and_reports_the_scaling(monkeypatch, tmp_path):
    for name, value in {
        "BENCH_LEVELS": "1,3",
        "BENCH_ROUNDS": "1",
        "BENCH_TOKENS": "12",
        "BENCH_MODELS": "llama4x512",
        "BENCH_ENGINES": "backtrack",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(bench_concurrency, "PLOT", tmp_path / "plot.png")
    monkeypatch.setattr(bench_concurrency, "REPO_ROOT", tmp_path)
    figures = bench_concurrency.run()
    for level in (1, 3):
        prefix = f"llama4x512.backtrack.c{level}"
        assert figures[f"{prefix}.tokens_per_s"] > 0
        # every stream delivered exactly its 12 tokens, unless the random model backtracked
        assert figures[f"{prefix}.chunk_mismatches"] == 0 or figures[f"{prefix}.backtracks"] > 0
        assert figures[f"{prefix}.ttft_p50_ms"] > 0
    assert figures["llama4x512.ours.c3_vs_c1"] > 0
    assert (tmp_path / "plot.png").stat().st_size > 0
