"""FSDP through `accelerate`, and the one thing it lacks for a CPU test: FSDP over gloo.

    accelerate launch --config_file configs/accelerate/fsdp_8gpu.yaml \
        -m training.train --config configs/llama31_8b_gsm8k.yaml

`accelerate launch` puts the config file's `fsdp_config` in the environment (`ACCELERATE_USE_FSDP`,
`FSDP_*`); the Trainer's `Accelerator` reads it and shards the model with torch's `fully_shard`
(FSDP2). On GPUs nothing here is involved.

On CPU, accelerate only ever picks plain data parallelism (`MULTI_CPU`) and ignores the FSDP
settings, although torch's FSDP2 itself runs on CPU over gloo. So that the sharded path (the
wrapping, the sharded optimizer step, gathering a full state dict to save) is tested on a machine
without a GPU, `enable_fsdp_on_cpu` switches the accelerator's state to FSDP with the plugin built
from the same environment, exactly as accelerate does on GPUs. It does so only when the launcher
asked for FSDP, no CUDA device exists and more than one process runs.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


def fsdp_requested() -> bool:
    """True when launched by `accelerate launch` with an FSDP config file."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_fsdp_on_cpu(accelerator) -> bool:
    """Turn a CPU accelerator that was asked for FSDP into an FSDP one; True when it is one."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if getattr(state, "fsdp_plugin", None) is not None:
        return True
    if not fsdp_requested() or torch.cuda.is_available():
        return False
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()  # the FSDP_* variables accelerate launch set
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU needs fsdp_version: 2 in the accelerate config")
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    # what accelerate does for GPUs: a later AcceleratorState() copies the partial state's type
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP2 on %d CPU processes (gloo)", state.num_processes)
    return True
