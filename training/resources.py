"""What a run cost: tokens per second per process and the memory training needed.

Recorded in `train_results.json` (rank 0's process; every rank runs the same shapes):
- `tokens_per_second_per_process`: token positions the model processed (padding included: it is
  computed all the same) per second of training, divided by the number of processes;
- `peak_rss_mb`, `rss_before_training_mb`: the process's resident memory high-water mark at the
  end and just before `trainer.train()` (weights loaded); the difference is what training
  (gradients, optimizer state, activations, communication buffers) added on top;
- `cuda_peak_allocated_mb` on a GPU: `torch.cuda.max_memory_allocated`, weights included;
- `trainable_parameters`, `parameters`: counted on this process (a shard under FSDP).
"""

from __future__ import annotations

import resource
import sys

import torch


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters held by this process."""
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if hasattr(parameter, "to_local"):  # an FSDP2 shard
            count = parameter.to_local().numel()
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total


def run_figures(trainer, rss_before_mb: float) -> dict[str, float]:
    runtime = trainer.state.log_history[-1].get("train_runtime") if trainer.state.log_history else 0
    world = trainer.args.world_size
    tokens = trainer.state.num_input_tokens_seen
    trainable, total = parameter_counts(trainer.model_wrapped)
    figures = {
        "tokens_seen": tokens,
        "tokens_per_second_per_process": tokens / runtime / world if runtime else 0.0,
        "rss_before_training_mb": round(rss_before_mb, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "trainable_parameters": trainable,
        "parameters": total,
    }
    if torch.cuda.is_available():
        figures["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return figures
