"""Fine-tuning paths on this machine: tokens/s per process and the memory a step needs.

The same small Llama (hidden 256, 4 layers, 4.2M parameters) and the same steps, four ways,
each a fresh `training.train` process (threads=1 per process):
* `full`:  one process, every weight trained (AdamW);
* `lora`:  one process, LoRA r=16 on the projections, BT's embedding row trained (peft);
* `ddp`:   two processes (torchrun, gloo), every weight replicated;
* `fsdp`:  two processes (accelerate launch configs/accelerate/fsdp_cpu_2proc.yaml), FSDP2.

Per run: token positions per second per process (the Trainer's count, padding included),
parameters and trainable parameters held by one process (FSDP: its shard), and rank 0's resident
memory before `trainer.train()` (weights loaded) and at its peak; `step_mb` is the difference:
what training added (gradients, optimizer state, activations, buffers);
`weights_grads_adam_mb` is the arithmetic for the parameters one process holds. At this size
Python, torch and the allocator dominate the resident memory; what carries to 8B is the
arithmetic (docs/training.md, "Fine-tuning large models").

Run: `python -m benchmarks bench_finetune` (about two minutes; not part of `make bench`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RUN_BY_DEFAULT = False
ROOT = Path(__file__).resolve().parents[1]
STEPS = 40
MODEL = [
    "model.hidden_size=256",
    "model.num_layers=4",
    "model.num_heads=8",
    "data.train_size=4096",
    "data.eval_size=8",
    f"training.max_steps={STEPS}",
    "training.per_device_train_batch_size=32",
    "training.eval_steps=0",
    "training.save_steps=100000",
    "training.logging_steps=10",
    "training.threads=1",
    "backtrack.use_curriculum=false",
    "backtrack.error_share=0.3",
]
TWO = ["--standalone", "--nproc_per_node", "2"]
SETUPS = {
    "full": ([], []),
    "lora": ([], ["lora.enabled=true", "lora.r=16", "lora.dropout=0"]),
    "ddp": (["-m", "torch.distributed.run", *TWO], []),
    "fsdp": (
        [
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            "configs/accelerate/fsdp_cpu_2proc.yaml",
        ],
        [],
    ),
}


def train_once(launcher: list[str], extra: list[str], output: Path) -> dict:
    command = [
        sys.executable,
        *launcher,
        "-m",
        "training.train",
        "--config",
        "configs/default.yaml",
        *MODEL,
        *extra,
        f"training.output_dir={output}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads((output / "train_results.json").read_text())


def run() -> dict[str, float | int | str]:
    figures: dict[str, float | int | str] = {"steps": STEPS, "sequences_per_process_step": 32}
    with tempfile.TemporaryDirectory() as scratch:
        for name, (launcher, extra) in SETUPS.items():
            results = train_once(launcher, extra, Path(scratch) / name)
            figures[f"{name}_processes"] = results["world_size"]
            figures[f"{name}_tokens_per_s_per_process"] = round(
                results["tokens_per_second_per_process"], 1
            )
            figures[f"{name}_params_per_process"] = results["parameters"]
            figures[f"{name}_trainable_per_process"] = results["trainable_parameters"]
            figures[f"{name}_rss_before_mb"] = results["rss_before_training_mb"]
            figures[f"{name}_rss_peak_mb"] = results["peak_rss_mb"]
            figures[f"{name}_step_mb"] = round(
                results["peak_rss_mb"] - results["rss_before_training_mb"], 1
            )
            trainable, frozen = results["trainable_parameters"], results["parameters"]
            frozen -= trainable  # fp32 here: 4 bytes a weight, +4 gradient, +8 AdamW's two moments
            figures[f"{name}_weights_grads_adam_mb"] = round((16 * trainable + 4 * frozen) / 1e6, 1)
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
