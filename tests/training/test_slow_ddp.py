"""The same entry point under torchrun: two CPU processes (gloo) train one model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backtrack.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_torchrun_with_two_cpu_processes_writes_one_checkpoint(tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "training.train", "--config", "configs/default.yaml",
        "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
        "data.train_size=64", "data.eval_size=8", "training.max_steps=4",
        "training.per_device_train_batch_size=4", "training.threads=1", "training.eval_steps=2",
        f"training.output_dir={output}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    results = json.loads((output / "train_results.json").read_text())
    assert results["world_size"] == 2
    assert results["train_samples_per_second"] > 0
    assert log.count("checkpoint written to") == 1  # rank 0 only
    loaded = load_checkpoint(output, torch.device("cpu"), torch.float32)
    assert loaded.metadata.training_config["training"]["max_steps"] == 4
