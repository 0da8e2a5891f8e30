"""The curriculum changes the injected errors by epoch without touching the dataset."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerControl, TrainerState, TrainingArguments

from training.config import PhaseConfig, load_config
from training.curriculum import CurriculumCallback, phase_at
from training.data import Example
from training.errors import ErrorPlan, Injector, build_source

EOS = 2


def run_epochs(callback: CurriculumCallback, epochs: list[float]) -> list[tuple[int, float]]:
    """Step the callback through `epochs`; the plan in force at each one."""
    args, control, state = (
        TrainingArguments("unused", report_to="none"),
        TrainerControl(),
        TrainerState(),
    )
    seen = []
    for step, epoch in enumerate(epochs):
        state.global_step, state.epoch = step, epoch
        callback.on_step_begin(args, state, control)
        seen.append((callback.plan.max_errors, callback.plan.error_share))
    return seen


def test_the_original_preset_switches_from_2_to_5_to_10_errors_at_epochs_3_and_6():
    config = load_config(
        Path(__file__).resolve().parents[2] / "configs" / "original_curriculum.yaml"
    )
    callback = CurriculumCallback(config.backtrack.phases, ErrorPlan())
    seen = run_epochs(callback, [0.0, 1.5, 2.99, 3.0, 5.5, 6.0, 8.9])
    assert [errors for errors, _ in seen] == [2, 2, 2, 5, 5, 10, 10]
    changes = [row for row in callback.history if "max_errors" in row]
    assert [(row["phase"], row["step"]) for row in changes] == [(0, 0), (1, 3), (2, 5)]


def test_a_clean_first_phase_injects_nothing_until_it_ends():
    phases = [PhaseConfig(0, 0, 0.0), PhaseConfig(0.5, 3, 1.0)]
    data = [Example((5,), (6, 7, 8, EOS))] * 50
    injector = Injector(build_source("in_distribution", data, 60, [0, 1, EOS, 3]), ErrorPlan())
    callback = CurriculumCallback(phases, injector.plan, injector)
    run_epochs(callback, [0.0, 0.25])
    assert all(injector(example) is None for example in data)
    run_epochs(callback, [0.5])
    assert all(injector(example) is not None for example in data)


def test_each_log_records_the_phase_and_the_observed_error_counts():
    data = [Example((5,), (6, 7, 8, EOS))] * 400
    injector = Injector(
        build_source("in_distribution", data, 60, [0, 1, EOS, 3]), ErrorPlan(), seed=1
    )
    callback = CurriculumCallback([PhaseConfig(0, 2, 0.5)], injector.plan, injector)
    run_epochs(callback, [0.0])
    for example in data:
        injector(example)
    logs: dict = {"loss": 1.0}
    callback.on_log(
        TrainingArguments("unused", report_to="none"), TrainerState(), TrainerControl(), logs
    )
    record = callback.history[-1]
    assert logs["curriculum_phase"] == 0
    assert set(record) >= {"errors_0", "errors_1", "errors_2"}
    assert abs(record["errors_0"] - 0.5) < 0.1
    assert "errors_3" not in record


def test_phase_at_picks_the_last_phase_begun():
    phases = [PhaseConfig(0), PhaseConfig(3), PhaseConfig(6)]
    assert [phase_at(phases, e) for e in (0, 2.9, 3, 100)] == [0, 0, 1, 2]
