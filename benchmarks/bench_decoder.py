"""The rewinding decoder against `model.generate()`, and what one backtrack costs.

* tokens/s of `backtrack.decoder.generate` vs `model.generate(do_sample=False)` on the same model,
  prompt and token count, batch 1, BT suppressed on both sides so the work is identical;
  runs alternate and the median of each side is compared (ratio > 1: the decoder is faster);
* forwards per backtrack, counted on the model itself (goal: exactly one single-token forward);
* a rewind's time at 64 vs 2048 tokens of context.

Run: `make bench` or `python -m benchmarks bench_decoder`.
"""

from __future__ import annotations

import statistics
import time

import torch

from backtrack.decoder import Sequence, generate
from backtrack.events import DoneEvent
from backtrack.params import GenerationParams
from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config
from backtrack.tokens import backtrack_token_id

NEW_TOKENS = 128
REPEATS = 5


def _model_and_tokenizer():
    tokenizer = build_char_tokenizer()
    config = tiny_llama_config(
        len(tokenizer),
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        max_positions=4096,
        initializer_range=0.5,
    )
    model = build_tiny_llama(config)
    banned = [tokenizer.eos_token_id, backtrack_token_id(tokenizer)]

    def never_end(_module, _inputs, logits):
        # identical work on both sides: neither may stop early nor backtrack
        logits[..., banned] = -1e4
        return logits

    model.lm_head.register_forward_hook(never_end)
    return model, tokenizer


def _time(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _throughput(model, tokenizer, bt_id: int) -> dict:
    prompt = [tokenizer.bos_token_id, *tokenizer.encode("123+456=")]
    params = GenerationParams(max_new_tokens=NEW_TOKENS, backtrack_policy="never")

    def ours() -> None:
        done = list(generate(model, tokenizer, bt_id, prompt, params))[-1]
        assert isinstance(done, DoneEvent) and done.generated_tokens == NEW_TOKENS

    def theirs() -> None:
        with torch.inference_mode():
            model.generate(
                torch.tensor([prompt]),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )

    ours()  # warm-up
    theirs()
    ours_times, theirs_times = [], []
    for _ in range(REPEATS):
        ours_times.append(_time(ours))
        theirs_times.append(_time(theirs))
    ours_tps = NEW_TOKENS / statistics.median(ours_times)
    theirs_tps = NEW_TOKENS / statistics.median(theirs_times)
    return {
        "decoder_tokens_per_s": ours_tps,
        "hf_generate_tokens_per_s": theirs_tps,
        "decoder_vs_generate_ratio": ours_tps / theirs_tps,
    }


class _ForwardCounter:
    """Counts forwards of the model and the tokens each one fed."""

    def __init__(self, model) -> None:
        self.calls: list[int] = []
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, _args, kwargs) -> None:
        self.calls.append(int(kwargs["input_ids"].shape[-1]))


def _forwards_per_backtrack(model, tokenizer, bt_id: int) -> dict:
    counter = _ForwardCounter(model)
    params = GenerationParams(max_new_tokens=64, backtrack_policy="never", max_backtracks=64)
    sequence = Sequence(model, tokenizer, bt_id, [tokenizer.bos_token_id, 5, 6, 7], params)
    for token in range(10, 18):
        sequence.force_token(token)
    counter.calls.clear()
    rewinds = 4
    for _ in range(rewinds):
        assert sequence.backtrack() is not None
    return {
        "forwards_per_backtrack": len(counter.calls) / rewinds,
        "tokens_fed_per_backtrack_forward": max(counter.calls),
    }


def _rewind_cost(model, tokenizer, bt_id: int, context: int) -> tuple[float, float]:
    """Median seconds of a rewind and of a plain decode step."""
    params = GenerationParams(
        max_new_tokens=4096, backtrack_policy="never", max_backtracks=10_000, max_backtrack_depth=64
    )
    prompt = [tokenizer.bos_token_id] + [5 + (i % 40) for i in range(context - 1)]
    sequence = Sequence(model, tokenizer, bt_id, prompt, params)
    rewinds, steps = [], []
    for _ in range(20):
        steps.append(_time(lambda: sequence.force_token(9)))
        rewinds.append(_time(sequence.backtrack))
    return statistics.median(rewinds), statistics.median(steps)


def run() -> dict:
    torch.manual_seed(0)
    model, tokenizer = _model_and_tokenizer()
    bt_id = backtrack_token_id(tokenizer)
    assert bt_id is not None
    figures = _throughput(model, tokenizer, bt_id)
    figures.update(_forwards_per_backtrack(model, tokenizer, bt_id))
    short_rewind, _ = _rewind_cost(model, tokenizer, bt_id, 64)
    long_rewind, long_step = _rewind_cost(model, tokenizer, bt_id, 2048)
    figures.update(
        {
            "rewind_ms_at_64": short_rewind * 1e3,
            "rewind_ms_at_2048": long_rewind * 1e3,
            "rewind_2048_vs_64_ratio": long_rewind / short_rewind,
            "rewind_vs_decode_step_at_2048": long_rewind / long_step,
        }
    )
    return figures
