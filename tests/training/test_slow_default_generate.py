"""The default checkpoint (`make train`) in plain transformers decodes as the server does.

Slow (`make test-slow`): it uses `checkpoints/default` when `make train` has made it, and trains
it otherwise (about 4 minutes on 2 cores). A checkpoint trained before checkpoints carried
`custom_generate/` gets it in a copy, written as `make train` writes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from backtrack.checkpoint import METADATA_FILE, load_checkpoint
from backtrack.custom_generate import write_custom_generate
from tests.traces import custom_trace, decoder_trace, load_with_custom_generate
from training import train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # training it takes minutes

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "checkpoints" / "default"
PROMPTS = ["123+456=", "408+594=", "250+250=", "999+999=", "314+271=", "7+8="]


@pytest.fixture(scope="module")
def default_checkpoint(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("default") / "checkpoint"
    if (DEFAULT / METADATA_FILE).exists():
        shutil.copytree(DEFAULT, copy, ignore=shutil.ignore_patterns("trainer"))
    else:
        config = str(ROOT / "configs" / "default.yaml")
        train.main(["--config", config, f"training.output_dir={copy}"])
    write_custom_generate(copy)
    return copy


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"backtrack_policy": "threshold", "backtrack_threshold": 0.01},
        {"do_sample": True, "temperature": 1.5, "seed": 3},
    ],
)
def test_arithmetic_prompts_decode_as_the_servers_decoder(default_checkpoint, params):
    loaded = load_checkpoint(default_checkpoint, torch.device("cpu"), torch.float32)
    model = load_with_custom_generate(default_checkpoint)
    for prompt in PROMPTS:
        ids = loaded.tokenizer(prompt).input_ids
        expected = decoder_trace(loaded, ids, max_new_tokens=8, **params)
        assert custom_trace(model, ids, max_new_tokens=8, **params) == expected, prompt
