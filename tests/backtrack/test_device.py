from __future__ import annotations

import pytest
import torch

from backtrack.device import resolve_device, resolve_dtype


def test_auto_picks_what_the_host_has():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_cuda_without_a_gpu_fails_with_a_clear_message():
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def test_auto_dtype_is_float32_on_cpu_and_names_are_checked():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype='fp8'"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_decoder_runs_in_bfloat16(char_tokenizer, backtrack_id):
    from backtrack.decoder import generate
    from backtrack.params import GenerationParams
    from backtrack.tiny import build_tiny_llama, tiny_llama_config

    model = build_tiny_llama(tiny_llama_config(len(char_tokenizer))).to(torch.bfloat16)
    params = GenerationParams(max_new_tokens=5, do_sample=True, seed=0)
    events = list(generate(model, char_tokenizer, backtrack_id, [1, 5, 6], params))
    assert events[-1].finish_reason in {"length", "eos"}
