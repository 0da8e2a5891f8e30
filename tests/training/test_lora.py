"""LoRA with peft on the tiny model: the merged checkpoint serves, matches the adapter's logits, and
every embedding row but BT's stays frozen."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from backtrack.checkpoint import load_checkpoint
from backtrack.custom_generate import CUSTOM_GENERATE_FILE, standalone_source
from backtrack.decoder import generate
from backtrack.params import GenerationParams
from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config
from backtrack.tokens import add_backtrack_token
from tests.traces import custom_trace, decoder_trace, load_with_custom_generate
from training import lora, train
from training.config import LoraConfig, ModelConfig, load_config
from training.modeling import starting_point

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "data.train_size=64",
    "data.eval_size=8",
    "training.max_steps=6",
    "training.per_device_train_batch_size=8",
    "training.learning_rate=1e-2",
    "training.warmup_ratio=0",
    "training.threads=1",
    "training.eval_steps=0",
    "backtrack.use_curriculum=false",
    "backtrack.error_share=0.5",
    "lora.enabled=true",
    "lora.r=4",
    "lora.dropout=0",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("lora") / "checkpoint"
    train.main(["--config", str(CONFIGS / "default.yaml"), *TINY, f"training.output_dir={output}"])
    return output


def base_and_adapter(run: Path):
    """The starting model rebuilt as training built it, and that model with the saved adapter."""
    config = load_config(CONFIGS / "default.yaml", TINY)
    base = starting_point(config.model, config.backtrack.init_words, config.training.seed)
    frozen = {name: value.clone() for name, value in base.model.state_dict().items()}
    adapted = lora.load_adapter(base.model, run / lora.ADAPTER_DIR).eval()
    return frozen, adapted, base.backtrack_id


def test_the_merged_checkpoint_matches_the_unmerged_model(run):
    merged = load_checkpoint(run, torch.device("cpu"), torch.float32)
    assert not hasattr(merged.model, "peft_config")  # a plain transformers model
    _, adapted, bt = base_and_adapter(run)
    ids = merged.tokenizer("123+456=579", return_tensors="pt").input_ids
    ids = torch.cat([ids, torch.tensor([[bt]])], dim=1)  # BT's trained rows are in play
    with torch.no_grad():
        torch.testing.assert_close(merged.model(ids).logits, adapted(ids).logits)


def test_the_adapters_trained_and_only_bts_embedding_row_moved(run):
    frozen, _, bt = base_and_adapter(run)
    merged = AutoModelForCausalLM.from_pretrained(run).state_dict()
    embedding, before = merged["model.embed_tokens.weight"], frozen["model.embed_tokens.weight"]
    others = torch.arange(len(before)) != bt
    assert torch.equal(embedding[others], before[others])  # every other row bit for bit
    assert not torch.equal(embedding[bt], before[bt])
    assert not torch.equal(
        merged["model.layers.0.self_attn.q_proj.weight"],
        frozen["model.layers.0.self_attn.q_proj.weight"],
    )  # the merged adapter changed the projection
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.equal(merged[norm], frozen[norm])  # neither adapted nor trained


def test_the_merged_checkpoint_serves(run):
    loaded = load_checkpoint(run, torch.device("cpu"), torch.float32)
    assert loaded.metadata.training_config["lora"]["enabled"] is True
    prompt = loaded.tokenizer("123+456=").input_ids
    params = GenerationParams(max_new_tokens=6, max_backtracks=2)
    events = list(generate(loaded.model, loaded.tokenizer, loaded.backtrack_id, prompt, params))
    assert events[-1].finish_reason in {"eos", "length"}
    results = json.loads((run / "train_results.json").read_text())
    assert 0 < results["trainable_parameters"] < results["parameters"]
    assert results["tokens_per_second_per_process"] > 0


def test_the_merged_checkpoint_backtracks_in_plain_transformers(run):
    assert (run / CUSTOM_GENERATE_FILE).read_bytes() == standalone_source()
    loaded = load_checkpoint(run, torch.device("cpu"), torch.float32)
    prompt = loaded.tokenizer("123+456=").input_ids
    custom = custom_trace(load_with_custom_generate(run), prompt, max_new_tokens=6)
    assert custom == decoder_trace(loaded, prompt, max_new_tokens=6)


def untied_tiny():
    tokenizer = build_char_tokenizer()
    config = tiny_llama_config(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2)
    config.tie_word_embeddings = False
    model = build_tiny_llama(config, seed=0)
    return model, add_backtrack_token(tokenizer, model)


def test_untied_output_rows_train_only_for_bt():
    model, bt = untied_tiny()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    settings = LoraConfig(enabled=True, r=4, dropout=0.0)
    wrapped = lora.get_peft_model(model, lora.peft_config(model, settings, bt))
    optimizer = torch.optim.SGD([p for p in wrapped.parameters() if p.requires_grad], lr=1.0)
    ids = torch.tensor([[1, 5, 6, bt, 7, 2]])
    for _ in range(2):  # LoRA's B starts at zero: the second step moves the merged weights
        wrapped(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = wrapped.merge_and_unload().state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        others = torch.arange(len(before[name])) != bt
        assert torch.equal(after[name][others], before[name][others]), name
        assert not torch.equal(after[name][bt], before[name][bt]), name


def test_full_rows_train_the_whole_matrices():
    model, bt = untied_tiny()
    config = lora.peft_config(model, LoraConfig(enabled=True, backtrack_rows="full"), bt)
    assert set(config.modules_to_save) == {"embed_tokens", "lm_head"}
    assert config.trainable_token_indices is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA runs where CUDA is")
def test_qlora_without_a_gpu_is_refused_naming_the_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(
            ["--config", str(CONFIGS / "default.yaml"), "lora.enabled=true", "lora.qlora=true"]
        )
    assert exit_info.value.code == 2
    assert "lora.qlora needs a CUDA GPU" in capsys.readouterr().err


def test_lora_under_an_fsdp_launch_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="launch it without an FSDP accelerate config"):
        lora.check_supported(LoraConfig(enabled=True), ModelConfig())


def test_qlora_quantizes_the_base_in_4bit_nf4():
    settings = LoraConfig(enabled=True, qlora=True)
    assert lora.quantization_config(LoraConfig(enabled=True), torch.bfloat16) is None
    pytest.importorskip(
        "bitsandbytes", reason="bitsandbytes is not installed: `pip install bitsandbytes`"
    )
    quantization = lora.quantization_config(settings, torch.bfloat16)
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4"


def test_lora_config_values_are_checked():
    with pytest.raises(ValueError, match=r"lora\.backtrack_rows must be one of"):
        load_config(None, ["lora.backtrack_rows=some"])
    with pytest.raises(ValueError, match=r"lora\.r must be at least 1"):
        load_config(None, ["lora.r=0"])


def test_the_qlora_merge_onto_a_reloaded_base_equals_the_in_place_merge():
    """QLoRA merges onto a fresh full-precision load of the base; without quantization (CPU) that
    path must give exactly what merging the trained model in place gives."""
    config = load_config(CONFIGS / "default.yaml", TINY)
    start = starting_point(config.model, config.backtrack.init_words, config.training.seed)
    wrapped = lora.wrap(start, config.lora, gradient_checkpointing=False).model
    with torch.no_grad():
        for parameter in wrapped.parameters():
            if parameter.requires_grad:  # stand-in for training: every trainable value moves
                parameter.add_(0.01 * torch.randn_like(parameter))
    seed = config.training.seed
    reloaded = lora.merge_into_reloaded_base(
        wrapped, config.model, config.backtrack.init_words, seed
    ).state_dict()
    in_place = wrapped.merge_and_unload().state_dict()
    assert reloaded.keys() == in_place.keys()
    for name, weight in in_place.items():
        torch.testing.assert_close(reloaded[name], weight, msg=name)


def test_the_merged_checkpoint_serves_over_http(run):
    import httpx

    from server.process import running_server

    with running_server(run) as server:
        body = {"inputs": "123+456=", "parameters": {"max_new_tokens": 4}}
        response = httpx.post(f"{server.url}/generate", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["generated_text"], str)
