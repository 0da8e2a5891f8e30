from __future__ import annotations

import pytest
import torch

from backtrack import device
from backtrack.device import cpu_flags, resolve_device, resolve_dtype


def test_auto_picks_what_the_host_has():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_cuda_without_a_gpu_fails_with_a_clear_message():
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


def test_auto_dtype_is_bf16_only_on_a_cpu_with_native_bf16_and_names_are_checked(monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512f", "avx2"})
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(device, "cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
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


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx512_bf16", "amx_tile"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
