"""The accelerate config files docs/training.md's launch commands name parse, and say what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from training.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize(
    ("name", "processes", "cpu"), [("fsdp_8gpu", 8, False), ("fsdp_cpu_2proc", 2, True)]
)
def test_the_fsdp_configs_shard_llama_layers_and_save_one_full_checkpoint(name, processes, cpu):
    config = load_config_from_file(str(CONFIGS / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    assert config.num_processes == processes and config.use_cpu is cpu
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # train.py saves a plain directory


def test_the_single_gpu_config_does_not_distribute():
    config = load_config_from_file(str(CONFIGS / "accelerate" / "single_gpu.yaml"))
    assert config.distributed_type == DistributedType.NO and config.num_processes == 1


def test_the_llama_presets_are_full_fsdp_and_one_gpu_lora():
    full = load_config(CONFIGS / "llama31_8b_gsm8k.yaml")
    assert not full.lora.enabled and full.training.bf16  # FSDP2 upcasts to fp32 masters
    lora = load_config(CONFIGS / "llama31_8b_gsm8k_lora.yaml")
    assert lora.lora.enabled and lora.lora.backtrack_rows == "token"
    assert lora.model.dtype == "bfloat16" and lora.training.gradient_checkpointing
    assert lora.model.name_or_path == full.model.name_or_path
