"""`training.train` end to end on a tiny model: a checkpoint plain transformers and the server load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from backtrack.checkpoint import load_checkpoint
from backtrack.custom_generate import CUSTOM_GENERATE_FILE, standalone_source
from backtrack.tokens import BACKTRACK_TOKEN
from tests.traces import custom_trace, decoder_trace, load_with_custom_generate
from training import evaluate, train
from training.config import load_config
from training.modeling import starting_point

TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "data.train_size=96",
    "data.eval_size=8",
    "training.per_device_train_batch_size=8",
    "training.logging_steps=2",
    "training.eval_steps=4",
    "training.save_steps=4",
    "training.epochs=1",
    "backtrack.phases=[{start_epoch: 0, max_errors: 0, error_share: 0}, "
    "{start_epoch: 0.5, max_errors: 3, error_share: 1.0}]",
]
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("run") / "checkpoint"
    train.main(["--config", str(CONFIGS / "default.yaml"), *TINY, f"training.output_dir={output}"])
    return output


def test_the_checkpoint_loads_with_plain_transformers(checkpoint):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    bt_id = tokenizer.convert_tokens_to_ids(BACKTRACK_TOKEN)
    assert BACKTRACK_TOKEN in tokenizer.all_special_tokens
    assert model.get_input_embeddings().weight.shape[0] > bt_id
    assert tokenizer.decode(tokenizer.encode("123+456=")) == "123+456="


def test_the_checkpoint_loads_as_a_servable_backtrack_checkpoint(checkpoint):
    loaded = load_checkpoint(checkpoint, torch.device("cpu"), torch.float32)
    assert loaded.metadata.objective == "rewind"
    assert loaded.metadata.task == "addition"
    assert loaded.metadata.training_config["model"]["hidden_size"] == 32
    assert loaded.backtrack_id == loaded.metadata.backtrack_token_id


def test_the_checkpoint_backtracks_in_plain_transformers_as_the_server_does(checkpoint):
    assert (checkpoint / CUSTOM_GENERATE_FILE).read_bytes() == standalone_source()
    loaded = load_checkpoint(checkpoint, torch.device("cpu"), torch.float32)
    model = load_with_custom_generate(checkpoint)
    prompt = loaded.tokenizer("123+456=").input_ids
    for params in ({}, {"backtrack_policy": "threshold", "backtrack_threshold": 0.02}):
        expected = decoder_trace(loaded, prompt, max_new_tokens=8, **params)
        assert custom_trace(model, prompt, max_new_tokens=8, **params) == expected


def test_the_run_leaves_its_loss_curve_and_curriculum_log(checkpoint):
    assert (checkpoint / "loss.png").read_bytes()[:4] == b"\x89PNG"
    history = json.loads((checkpoint / "curriculum.json").read_text())
    assert [row["max_errors"] for row in history if "max_errors" in row] == [0, 3]
    logged = [row for row in history if "errors_0" in row or "errors_1" in row]
    assert any(row.get("errors_0") == 1.0 for row in logged)  # the clean phase
    assert any(row.get("errors_0", 0) < 1.0 for row in logged)  # then every example corrupted
    assert json.loads((checkpoint / "train_results.json").read_text())["train_runtime"] > 0


def test_a_rerun_resumes_from_the_last_trainer_checkpoint(checkpoint, caplog):
    caplog.set_level("INFO", logger="training")
    train.main(
        [
            "--config",
            str(CONFIGS / "default.yaml"),
            *TINY,
            f"training.output_dir={checkpoint}",
            "training.epochs=2",
        ]
    )
    assert "resuming from" in caplog.text
    state = json.loads(
        next((checkpoint / "trainer").glob("checkpoint-*/trainer_state.json")).read_text()
    )
    assert state["global_step"] == 24


def test_evaluation_writes_every_figure(checkpoint, capsys):
    evaluate.main(["--checkpoint", str(checkpoint), "--problems", "4", "--temperatures", "0", "2"])
    figures = json.loads((checkpoint / "eval.json").read_text())
    assert set(figures["accuracy"]) == {"T=0", "T=2"}
    assert set(figures["accuracy"]["T=0"]) == {"plain", "rewind", "keep"}
    assert 0 <= figures["recovery_rate"] <= 1 and 0 <= figures["false_backtrack_rate"] <= 1
    assert "recovery rate" in capsys.readouterr().out


def test_evaluation_batches_in_training_stay_clean():
    config = load_config(
        CONFIGS / "default.yaml",
        [*TINY, "backtrack.use_curriculum=false", "backtrack.error_share=1.0"],
    )
    start = starting_point(config.model, config.backtrack.init_words, seed=0)
    trainer, callback = train.build_trainer(config, start)
    callback.on_step_begin(trainer.args, trainer.state, trainer.control)
    bt = start.backtrack_id
    assert all((batch["shift_labels"] == bt).any() for batch in trainer.get_train_dataloader())
    assert not any((batch["shift_labels"] == bt).any() for batch in trainer.get_eval_dataloader())


def test_without_backtracking_the_run_is_plain_sft():
    config = load_config(CONFIGS / "default.yaml", [*TINY, "backtrack.use_backtrack=false"])
    start = starting_point(config.model, config.backtrack.init_words, seed=0)
    trainer, callback = train.build_trainer(config, start)
    assert callback is None
    assert not any(
        (b["shift_labels"] == start.backtrack_id).any() for b in trainer.get_train_dataloader()
    )


def test_a_bad_config_value_exits_with_a_message_naming_the_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", str(CONFIGS / "default.yaml"), "backtrack.objective=sideways"])
    assert exit_info.value.code == 2
    assert "backtrack.objective must be one of" in capsys.readouterr().err
