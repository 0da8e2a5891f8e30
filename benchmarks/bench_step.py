"""The decode step against the hardware's limits, and against itself on shared cores.

In one run, on the same cores:

* the machine's own bounds: a large-array read (GB/s) and a large square fp32 and bf16 matmul
  (GFLOP/s);
* decode tokens/s of the batch decoder at 1, 2, 4, 8 and 16 rows, greedy, on the 4x512 random
  Llama and on SmolLM2-135M (when `scripts/fetch_smollm2.sh` has run): the padded layout eager
  (the previous release), the position-addressed layout eager and compiled, in fp32, and the
  compiled step in bf16;
* the ratios the engine is judged by: one fp32 SmolLM2 stream against the bandwidth bound
  (weights bytes / GB/s), bf16 against fp32 at one stream, the 16-row step's FLOP/s against the
  matmul's;
* shared cores: one stream's tokens/s and the default config's training steps/s, quiet and
  with one busy single-threaded process beside, for each way idle OpenMP threads may wait
  (sleep at once, spin N times then sleep, spin forever) and the product's own choice.

Every measurement runs in a fresh process (`python -m benchmarks.bench_step --worker SPEC`):
the OpenMP wait policy is fixed when torch loads, and a measurement must not inherit another's
compiled graphs or allocator state. Compiled kernels are cached on disk by inductor, so a
second run compiles faster. Run: `make bench-step`. Nothing else should run on the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RUN_BY_DEFAULT = False
ROWS = (1, 2, 4, 8, 16)
NEW_TOKENS = 64
REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = (
    ("padded", "float32", False),
    ("slots", "float32", False),
    ("slots", "float32", True),
    ("slots", "bfloat16", True),
)


# -- workers (each in its own process) --------------------------------------------------------


def _model(name: str, dtype: str) -> tuple[Any, Any, int, list[int]]:
    import torch

    tokenizer: Any

    if name == "llama":
        from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config
        from backtrack.tokens import backtrack_token_id

        tokenizer = build_char_tokenizer()
        config = tiny_llama_config(
            len(tokenizer), hidden_size=512, num_layers=4, num_heads=8, max_positions=4096
        )
        model = build_tiny_llama(config)
        backtrack_id = backtrack_token_id(tokenizer) or 0
        prompt = [1, *range(5, 25)]
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from benchmarks.smollm2_checkpoint import smollm2_checkpoint

        directory = smollm2_checkpoint()
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        backtrack_id = int(tokenizer.convert_tokens_to_ids("<|BACKTRACK|>"))
        prompt = tokenizer("The capital of France is a city that")["input_ids"]
    return model.to(getattr(torch, dtype)), tokenizer, backtrack_id, prompt


def _threads(spec: dict) -> Any:
    """Size torch's pool as the product does; the `CoreShare` that follows free cores (None
    when the spec says `"follow": false` or fixes `threads`)."""
    from backtrack.core_share import core_share_for
    from backtrack.threads import configure_threads

    threads = configure_threads(spec.get("threads"))
    return core_share_for(spec.get("threads"), threads) if spec.get("follow", True) else None


def _decode(spec: dict) -> dict:
    """Tokens/s at each row count, best of two rounds after a warm-up round."""
    import torch

    from backtrack.batch import BatchDecoder
    from backtrack.params import GenerationParams

    core_share = _threads(spec)
    model, tokenizer, backtrack_id, prompt = _model(spec["model"], spec["dtype"])
    params = GenerationParams(
        max_new_tokens=spec.get("new_tokens", NEW_TOKENS), backtrack_policy="never", ignore_eos=True
    )
    started = time.perf_counter()
    decoder = BatchDecoder(
        model,
        tokenizer,
        backtrack_id,
        kv_layout=spec["layout"],
        compile_step=spec["compiled"],
        core_share=core_share,
    )
    decoder.warm_up(max(spec["rows"]))
    compile_seconds = time.perf_counter() - started

    def one_round(rows: int) -> float:
        for index in range(rows):
            decoder.add(prompt[: len(prompt) - index % 5], params)
        decoder.prefill()
        start = time.perf_counter()
        tokens = 0
        while decoder.rows:
            tokens += decoder.step().sampled_tokens
        return tokens / (time.perf_counter() - start)

    figures: dict = {"compile_seconds": round(compile_seconds, 1)}
    with torch.inference_mode():
        for rows in spec["rows"]:
            one_round(rows)
            figures[str(rows)] = max(one_round(rows) for _ in range(2))
    figures["parameters"] = sum(p.numel() for p in model.parameters())
    figures["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return figures


def _bounds(spec: dict) -> dict:
    """Large-array read GB/s and square-matmul GFLOP/s, fp32 and bf16, best of five."""
    import torch

    from backtrack.threads import configure_threads

    configure_threads(spec.get("threads"))
    big = torch.ones(256 * 1024 * 1024 // 4)  # 1 GiB of float32
    big.sum()
    reads = []
    for _ in range(5):
        start = time.perf_counter()
        big.sum()
        reads.append(big.numel() * 4 / (time.perf_counter() - start) / 1e9)
    figures: dict = {"read_gb_per_s": max(reads)}
    for dtype in ("float32", "bfloat16"):
        a = torch.randn(2048, 2048).to(getattr(torch, dtype))
        a @ a
        best = 0.0
        for _ in range(5):
            start = time.perf_counter()
            a @ a
            best = max(best, 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
        figures[f"matmul_{dtype}_gflops"] = best
    return figures


def _train(spec: dict) -> dict:
    """Steps/s of the default config's model and batch (forward, backward, AdamW)."""
    import torch

    from backtrack.tiny import build_char_tokenizer, build_tiny_llama, tiny_llama_config

    core_share = _threads(spec)
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(tiny_llama_config(len(tokenizer), hidden_size=128, num_layers=4))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(3, len(tokenizer), (64, 24))

    def step() -> None:
        if core_share is not None:  # as training's FollowFreeCores callback does
            core_share.follow()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(5):
        step()
    steps, start = spec.get("steps", 60), time.perf_counter()
    for _ in range(steps):
        step()
    return {"steps_per_s": steps / (time.perf_counter() - start)}


WORKERS = {"decode": _decode, "bounds": _bounds, "train": _train}


# -- the orchestration -------------------------------------------------------------------------


@contextmanager
def busy_neighbour(active: bool):
    """One busy single-threaded process beside the measurement (or nothing)."""
    if not active:
        yield
        return
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        process.kill()
        process.wait()


WAITS: dict[str, dict[str, str]] = {
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin_1k": {"GOMP_SPINCOUNT": "1000"},
    "spin_10k": {"GOMP_SPINCOUNT": "10000"},
    "spin_100k": {"GOMP_SPINCOUNT": "100000"},
    "libgomp_default": {"GOMP_SPINCOUNT": "300000"},
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},
}
"""How idle OpenMP threads wait: sleep at once, spin N times then sleep, or spin forever."""
CHOSEN_WAIT = "default"
"""The product's own choice: its short spin (`backtrack.threads.bound_spin_waits`) and threads
that follow the free cores (`backtrack.core_share`); nothing set here."""
FIXED_THREADS = "default_fixed_threads"
"""The product's spin with the thread count fixed: what following free cores adds."""


def measure(spec: dict, waits: dict[str, str] | None = None, loaded: bool = False) -> dict:
    """Run one worker in a fresh process: `waits` set (else the product's own choice), beside
    a busy process when `loaded`."""
    skipped = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
    env = {key: value for key, value in os.environ.items() if key not in skipped}
    env.update(waits or {})
    env["PYTHONWARNINGS"] = "ignore"
    with busy_neighbour(loaded):
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_step", "--worker", json.dumps(spec)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    if result.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


SHARED_SPECS: dict[str, tuple[dict[str, Any], str]] = {
    "train": ({"kind": "train"}, "steps_per_s"),
    "stream": (
        {
            "kind": "decode",
            "model": "llama",
            "layout": "slots",
            "dtype": "float32",
            "compiled": True,
            "rows": [1],
        },
        "1",
    ),
}


def run_shared(names: list[str] | None = None) -> dict:
    """Training steps/s and one stream's tokens/s, quiet and beside a busy process, for each
    way of waiting (all, or those `names`); `loaded_vs_best_quiet` divides by the best quiet
    figure of all of them. Only the product's own choice follows free cores."""
    every = {CHOSEN_WAIT: {}, FIXED_THREADS: {}, **WAITS}
    waits = {name: every[name] for name in (names or every)}
    figures: dict = {}
    for kind, (base, key) in SHARED_SPECS.items():
        quiet: dict[str, float] = {}
        for name, env in waits.items():
            spec = {**base, "follow": name == CHOSEN_WAIT}
            quiet[name] = measure(spec, env)[key]
            loaded = measure(spec, env, loaded=True)[key]
            figures[f"shared_{kind}_{name}_quiet"] = round(quiet[name], 2)
            figures[f"shared_{kind}_{name}_loaded"] = round(loaded, 2)
            figures[f"shared_{kind}_{name}_loaded_vs_quiet"] = round(loaded / quiet[name], 2)
        best = max(quiet.values())
        for name in waits:
            loaded = figures[f"shared_{kind}_{name}_loaded"]
            figures[f"shared_{kind}_{name}_loaded_vs_best_quiet"] = round(loaded / best, 2)
            figures[f"shared_{kind}_{name}_quiet_vs_best_quiet"] = round(quiet[name] / best, 2)
    return figures


def _models() -> list[str]:
    from benchmarks.smollm2_checkpoint import smollm2_missing

    missing = smollm2_missing()
    if missing:
        print(f"bench_step: SmolLM2 skipped ({missing})", file=sys.stderr)
    return ["llama"] + ([] if missing else ["smollm2"])


def startup_seconds(checkpoint: Path, cache_dir: Path) -> float:
    """Seconds from `python -m server` to /health 200, the compiled step warmed up."""
    from backtrack.threads import available_cpus
    from server.process import running_server

    env = {"TORCHINDUCTOR_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    with running_server(
        checkpoint, startup_timeout=600, env=env, compile="true", threads=available_cpus()
    ):
        return time.perf_counter() - start


def run_startup(checkpoint: Path = REPO_ROOT / "checkpoints" / "default") -> dict:
    """Start-up of the default checkpoint with compile on: a cold compile cache, then a
    restart that finds it (inductor's FX graph and C++ caches in TORCHINDUCTOR_CACHE_DIR)."""
    if not (checkpoint / "backtrack.json").exists():
        print(f"bench_step: start-up skipped ({checkpoint} missing: make train)", file=sys.stderr)
        return {}
    with tempfile.TemporaryDirectory() as cache:
        cold = startup_seconds(checkpoint, Path(cache))
        warm = startup_seconds(checkpoint, Path(cache))
    return {"startup_cold_cache_s": round(cold, 1), "startup_warm_cache_s": round(warm, 1)}


def run() -> dict:
    figures: dict = run_startup()
    bounds = measure({"kind": "bounds"})
    figures.update({f"machine_{key}": value for key, value in bounds.items()})
    for model in _models():
        decoded: dict[tuple, dict] = {}
        for layout, dtype, compiled in VARIANTS:
            spec = {"kind": "decode", "model": model, "layout": layout, "dtype": dtype}
            decoded[(layout, dtype, compiled)] = result = measure(
                {**spec, "compiled": compiled, "rows": list(ROWS)}
            )
            name = f"{model}_{layout}_{'compiled' if compiled else 'eager'}_{dtype}"
            for rows in ROWS:
                figures[f"{name}_{rows}_rows_tok_s"] = round(result[str(rows)], 1)
            if compiled:
                figures[f"{name}_compile_s"] = result["compile_seconds"]
        padded = decoded[("padded", "float32", False)]
        fast = decoded[("slots", "float32", True)]
        bf16 = decoded[("slots", "bfloat16", True)]
        for rows in ROWS:
            figures[f"{model}_compiled_vs_padded_{rows}_rows"] = round(
                fast[str(rows)] / padded[str(rows)], 2
            )
        bound = bounds["read_gb_per_s"] * 1e9 / fast["weight_bytes"]
        figures[f"{model}_fp32_bandwidth_bound_tok_s"] = round(bound, 1)
        figures[f"{model}_fp32_one_stream_vs_bound"] = round(fast["1"] / bound, 2)
        figures[f"{model}_bf16_vs_fp32_one_stream"] = round(bf16["1"] / fast["1"], 2)
        flops = 2 * fast["parameters"] * fast["16"]
        figures[f"{model}_16_rows_gflops_vs_matmul"] = round(
            flops / 1e9 / bounds["matmul_float32_gflops"], 2
        )
    figures.update(run_shared())
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", help="run one measurement (JSON spec) and print its figures")
    parser.add_argument("--shared", action="store_true", help="only the shared-cores figures")
    parser.add_argument(
        "--waits",
        nargs="+",
        choices=[CHOSEN_WAIT, FIXED_THREADS, *WAITS],
        help="with --shared: only these ways of waiting (default: all)",
    )
    args = parser.parse_args()
    if args.shared:
        for key, value in run_shared(args.waits).items():
            print(f"{key}: {value}", flush=True)
        return
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return
    for key, value in run().items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
