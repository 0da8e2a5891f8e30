"""The seed table: every run's figure, and min / mean / max over the runs."""

from __future__ import annotations

import pytest

from training.plots import save_accuracy_plot
from training.seeds import markdown, summarise


def eval_figures(greedy: float, repair: float) -> dict:
    return {
        "problems": 10,
        "accuracy": {
            "T=0": {"plain": greedy, "rewind": greedy},
            "T=2": {"plain": 0.5, "rewind": 0.5 + 0.5 * repair},
        },
        "error_repair": {"T=2": {"rewind": repair}},
        "recovery_rate": 0.9,
        "false_backtrack_rate": 0.01,
    }


def test_the_table_reports_the_worst_run_not_only_the_mean():
    table = summarise(
        {"seed0-threads1": eval_figures(1.0, 0.9), "seed1-threads1": eval_figures(0.98, 0.3)}
    )
    repair = table["error repair T=2"]
    assert repair["min"] == pytest.approx(0.3)
    assert repair["mean"] == pytest.approx(0.6)
    assert repair["max"] == pytest.approx(0.9)
    assert repair["runs"] == pytest.approx({"seed0-threads1": 0.9, "seed1-threads1": 0.3})
    assert table["recovery, wrong non-digit"]["min"] is None  # not reported: shown as "-"
    text = markdown(table)
    assert "| error repair T=2 | >= 75%: no | 30.0% | 60.0% | 90.0% | 90.0% | 30.0% |" in text
    assert "| false backtracks | <= 1%: yes |" in text
    # computed from the accuracies even where plain decoding is above 90% (eval.json omits it)
    figures = eval_figures(1.0, 0.5)
    figures["accuracy"]["T=1.5"] = {"plain": 0.92, "rewind": 0.98}
    assert summarise({"run": figures})["error repair T=1.5"]["min"] == pytest.approx(0.75)


def test_the_accuracy_plot_is_written(tmp_path):
    path = save_accuracy_plot(eval_figures(1.0, 0.8), tmp_path / "accuracy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
