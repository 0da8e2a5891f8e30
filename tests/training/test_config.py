"""Configs: YAML presets load, command-line overrides win, mistakes name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import Config, ConfigError, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda path: path.name)
def test_every_preset_loads(path):
    assert isinstance(load_config(path), Config)


def test_overrides_from_the_command_line_win_and_numbers_stay_numbers():
    config = load_config(
        CONFIGS / "default.yaml",
        ["training.learning_rate=1e-3", "backtrack.objective=masked", "training.epochs=2"],
    )
    assert config.training.learning_rate == 0.001
    assert config.backtrack.objective == "masked"
    assert config.training.epochs == 2.0


def test_a_config_survives_the_round_trip_through_checkpoint_metadata():
    config = load_config(CONFIGS / "original_curriculum.yaml")
    assert config_from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("backtrack.objective=shuffle", "backtrack.objective"),
        ("training.learning_rat=1", "learning_rat"),
        ("backtrack.error_share=1.5", "backtrack.error_share"),
        ("training.epochs=many", "training.epochs"),
        ("backtrack.phases=[{start_epoch: 1}]", "backtrack.phases"),
    ],
)
def test_a_bad_value_is_refused_with_the_field_named(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CONFIGS / "default.yaml", [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.max_steps=2.7", "training.max_steps: Input should be a valid integer"),
        ("backtrack.phases=[{max_errors: 1.5}]", "backtrack.phases.0.max_errors"),
        ("backtrack.objective=shuffle", "backtrack.objective must be one of"),
        ("training.learning_rat=1", "unknown field training.learning_rat"),
        ("training=3", "training:"),
    ],
)
def test_types_are_checked_not_coerced_and_the_error_names_section_and_field(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(CONFIGS / "default.yaml", [override])
    assert str(error.value).startswith(message)


def test_yaml_strings_for_bools_read_as_yaml_reads_them(tmp_path):
    preset = tmp_path / "quoted.yaml"
    preset.write_text('backtrack:\n  use_backtrack: "no"\ntraining:\n  bf16: "yes"\n')
    config = load_config(preset)
    assert config.backtrack.use_backtrack is False and config.training.bf16 is True
    assert load_config(None, ["backtrack.use_curriculum=off"]).backtrack.use_curriculum is False


def test_a_number_for_a_string_field_stays_usable():
    config = load_config(None, ["training.output_dir=2024", "model.dtype=bfloat16"])
    assert config.training.output_dir == "2024" and config.model.dtype == "bfloat16"


def test_every_training_field_reaches_the_trainer_under_its_own_name_or_a_known_one():
    from transformers import TrainingArguments

    from training.train import check_trainer_args, training_arguments

    config = load_config(
        None,
        ["training.learning_rate=0.002", "training.epochs=3", "training.output_dir=/tmp/x"],
    )
    config.training.trainer_args = {"max_grad_norm": 0.25, "adam_beta2": 0.95}
    args = training_arguments(config, has_eval=True)
    assert isinstance(args, TrainingArguments)
    assert (args.learning_rate, args.num_train_epochs) == (0.002, 3)
    assert (args.max_grad_norm, args.adam_beta2) == (0.25, 0.95)
    config.training.trainer_args = {"learning_rate": 0.1}
    with pytest.raises(ConfigError, match=r"training\.trainer_args\.learning_rate"):
        check_trainer_args(config)


def test_an_unknown_trainer_argument_fails_at_start_up_naming_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("training:\n  trainer_args:\n    max_grad_nrom: 0.5\n")
    with pytest.raises(ConfigError, match=r"training\.trainer_args\.max_grad_nrom"):
        load_config(str(path), [])
