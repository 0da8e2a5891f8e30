"""Full fine-tuning sharded with FSDP through `accelerate launch`: two CPU processes over gloo,
with the accelerate config file docs/training.md documents. The sharded run writes one plain
checkpoint whose weights match plain data parallelism (torchrun, DDP) on the same data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from backtrack.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # about 30 s on two shared cores
ROOT = Path(__file__).resolve().parents[2]
RUN = [
    "-m", "training.train", "--config", "configs/default.yaml",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
    "data.train_size=64", "data.eval_size=8", "training.max_steps=4", "training.save_steps=2",
    "training.per_device_train_batch_size=4", "training.threads=1", "training.eval_steps=2",
    "training.learning_rate=1e-2", "training.warmup_ratio=0",
    "backtrack.use_curriculum=false", "backtrack.error_share=0.5",
]  # fmt: skip


def launch(prefix: list[str], output: Path) -> str:
    command = [sys.executable, *prefix, *RUN, f"training.output_dir={output}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, str]:
    base = tmp_path_factory.mktemp("fsdp")
    config = "configs/accelerate/fsdp_cpu_2proc.yaml"
    log = launch(["-m", "accelerate.commands.launch", "--config_file", config], base / "fsdp")
    ddp = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launch(ddp, base / "ddp")
    return base / "fsdp", base / "ddp", log


def test_two_processes_train_sharded_and_write_one_checkpoint(runs):
    fsdp, _, log = runs
    assert log.count("FSDP2 on 2 CPU processes") == 2
    assert log.count("checkpoint written to") == 1  # rank 0 only
    results = json.loads((fsdp / "train_results.json").read_text())
    assert results["world_size"] == 2
    assert results["tokens_per_second_per_process"] > 0
    loaded = load_checkpoint(fsdp, torch.device("cpu"), torch.float32)
    total = sum(p.numel() for p in loaded.model.parameters())
    assert results["parameters"] < 0.75 * total  # each process held about half: sharded


def test_the_sharded_run_matches_data_parallel_training(runs):
    fsdp, ddp, _ = runs
    sharded = AutoModelForCausalLM.from_pretrained(fsdp).state_dict()
    replicated = AutoModelForCausalLM.from_pretrained(ddp).state_dict()
    initial = AutoModelForCausalLM.from_config(
        AutoModelForCausalLM.from_pretrained(ddp).config
    ).state_dict()
    assert sharded.keys() == replicated.keys()
    for name, weight in sharded.items():
        torch.testing.assert_close(weight, replicated[name], rtol=1e-4, atol=1e-5, msg=name)
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.allclose(sharded[name], initial[name])  # it trained


def test_the_sharded_trainer_checkpoint_is_resumable_state(runs):
    fsdp, _, _ = runs
    saved = next((fsdp / "trainer").glob("checkpoint-*"))
    assert (saved / "optimizer.bin").exists() or any(saved.glob("optimizer*"))
