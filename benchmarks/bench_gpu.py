"""Decode throughput on a GPU against its memory-bandwidth bound (`make test-gpu` runs it).

A random Llama of about 1.1B parameters (2048 wide, 16 layers, 32 heads, 8 KV heads) in bf16,
greedy, 128 new tokens per row, at 1 to 64 rows: the position-addressed layout with the
compiled step (CUDA graphs), and the padded layout eager (the previous release) beside it. The
bound: a decode step reads every weight once, so one step takes at least weight bytes / the
bandwidth a large device-to-device copy reaches (measured in the same run); rows x that rate is
the most tokens/s a memory-bound step can give. Run: `python -m benchmarks bench_gpu`.
"""

from __future__ import annotations

import time

import torch

from backtrack.batch import BatchDecoder
from backtrack.params import GenerationParams
from backtrack.tiny import build_char_tokenizer
from backtrack.tokens import backtrack_token_id

RUN_BY_DEFAULT = False
ROWS = (1, 2, 4, 8, 16, 32, 64)
NEW_TOKENS = 128


def copy_bandwidth(device: torch.device) -> float:
    """GB/s of a 2 GiB device-to-device copy (read + write counted), best of five."""
    source = torch.empty(1 << 30, dtype=torch.bfloat16, device=device)
    target = torch.empty_like(source)
    best = 0.0
    for _ in range(5):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize(device)
        best = max(best, 2 * source.numel() * 2 / (time.perf_counter() - start) / 1e9)
    return best


def llama_1b(vocab: int, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).bfloat16()
    return model.eval()


def tokens_per_second(decoder: BatchDecoder, rows: int) -> float:
    params = GenerationParams(max_new_tokens=NEW_TOKENS, backtrack_policy="never", ignore_eos=True)
    for index in range(rows):
        decoder.add([1, *range(5, 5 + 16 + index % 8)], params)
    decoder.prefill()
    torch.cuda.synchronize()
    start, tokens = time.perf_counter(), 0
    while decoder.rows:
        tokens += decoder.step().sampled_tokens
    torch.cuda.synchronize()
    return tokens / (time.perf_counter() - start)


def run() -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    device = torch.device("cuda")
    tokenizer = build_char_tokenizer()
    backtrack_id = backtrack_token_id(tokenizer)
    assert backtrack_id is not None
    model = llama_1b(len(tokenizer), device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth(device)
    figures: dict = {
        "gpu": torch.cuda.get_device_name(device),
        "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 2),
        "copy_gb_per_s": round(bandwidth, 1),
        "bound_steps_per_s": round(bandwidth * 1e9 / weight_bytes, 1),
    }
    compiled = BatchDecoder(model, tokenizer, backtrack_id, kv_layout="slots", compile_step=True)
    start = time.perf_counter()
    compiled.warm_up(max(ROWS))
    figures["compile_seconds"] = round(time.perf_counter() - start, 1)
    padded = BatchDecoder(model, tokenizer, backtrack_id, kv_layout="padded")
    for rows in ROWS:
        tokens_per_second(compiled, rows)  # a first round: kernels and allocator settle
        fast = tokens_per_second(compiled, rows)
        slow = tokens_per_second(padded, rows)
        bound = rows * figures["bound_steps_per_s"]
        figures[f"{rows}_rows_compiled_tok_s"] = round(fast, 1)
        figures[f"{rows}_rows_padded_eager_tok_s"] = round(slow, 1)
        figures[f"{rows}_rows_compiled_vs_padded"] = round(fast / slow, 2)
        figures[f"{rows}_rows_compiled_vs_bound"] = round(fast / bound, 2)
    return figures
