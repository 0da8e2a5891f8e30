"""Calibrating the `threshold` policy: the curve, the rule that picks a threshold, the report."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtrack.prompts import PromptEncoder
from backtrack.tiny import save_tiny_checkpoint
from tests.training.test_evaluate import biased_model
from training.calibrate import (
    THRESHOLDS,
    BacktrackOdds,
    backtrack_odds,
    choose_threshold,
    curve,
    main,
)
from training.config import Config
from training.evaluate import Subject, held_out_problems

probabilities = st.lists(st.floats(0, 1), max_size=50)


@given(on_correct=probabilities, after_error=probabilities)
def test_a_higher_threshold_never_deletes_more(on_correct, after_error):
    points = curve(BacktrackOdds(on_correct, after_error))
    for lower, higher in pairwise(points):
        assert higher["false_backtracks"] <= lower["false_backtracks"]
        assert higher["recovery"] <= lower["recovery"]


def point(threshold: float, false: float) -> dict[str, float]:
    return {"threshold": threshold, "false_backtracks": false, "recovery": 0.5}


def test_the_rule_takes_the_most_accurate_threshold_within_the_false_backtrack_budget():
    points = [point(0.05, 0.03), point(0.1, 0.008), point(0.3, 0.002), point(0.9, 0.0)]
    accuracy = {0.05: 0.99, 0.1: 0.95, 0.3: 0.97, 0.9: 0.97}
    assert choose_threshold(points, accuracy) == 0.9  # 0.05 is over budget; a tie: the higher
    assert choose_threshold(points, {**accuracy, 0.3: 0.98}) == 0.3
    assert choose_threshold([point(0.1, 0.5), point(0.5, 0.2)], {0.1: 1, 0.5: 1}) == 0.5


@pytest.mark.parametrize(("shift", "share"), [(1e4, 1.0), (-1e4, 0.0)])
def test_the_curve_counts_where_p_bt_passes_each_threshold(
    char_tokenizer, backtrack_id, shift, share
):
    model = biased_model(len(char_tokenizer), backtrack_id, shift)
    problems = held_out_problems(Config(), 4)
    subject = Subject(model, char_tokenizer, backtrack_id, problems, PromptEncoder(char_tokenizer))
    odds = backtrack_odds(subject)
    assert len(odds.after_error) == 4 and len(odds.on_correct) >= 4 * 4  # every answer position
    assert all(p["false_backtracks"] == p["recovery"] == share for p in curve(odds))


def test_the_command_writes_the_curve_the_choice_and_the_decodings(tmp_path, capsys):
    save_tiny_checkpoint(str(tmp_path))
    main(["--checkpoint", str(tmp_path), "--problems", "6", "--threads", "1"])
    figures = json.loads((tmp_path / "calibration.json").read_text())
    assert figures["problems"] == {"calibration": 3, "held_out": 3}
    assert [p["threshold"] for p in figures["curve_held_out"]] == list(THRESHOLDS)
    assert figures["chosen_threshold"] in THRESHOLDS
    for rows in figures["decoding_held_out"].values():
        assert set(rows) == {"plain", "argmax", f"threshold {figures['chosen_threshold']:g}"}
        assert all(row["forwards_per_answer"] >= 1 for row in rows.values())
    assert (tmp_path / "calibration.png").stat().st_size > 0
    assert "threshold chosen on 3 problems" in capsys.readouterr().out
