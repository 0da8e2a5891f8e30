"""Does the recipe hold? Train and evaluate one config under several seeds and thread counts.

    make eval-seeds                                              # seeds 0 1 2, threads 1 and 2
    python -m training.seeds --config configs/default.yaml --seeds 0 1 2 --threads 1 2

Training is deterministic on one machine but not across machines: float rounding differs. Two
thread counts change the rounding the way another machine would, so a recipe passes only if
every run (seed x threads) meets every figure, not their mean. Each run trains in its own process
(`training.train`, the thread count is per process) into `<out>/seed<S>-threads<T>` and is
evaluated there (`training.evaluate`, `eval.json`); a finished run is not redone. `--jobs 2` runs
two at once: each keeps its thread count, so the figures are those of a run alone, only slower. The table of
min / mean / max per figure is printed and written to `<out>/summary.md` and `summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FIGURES: dict[str, tuple[str, ...]] = {
    "greedy accuracy": ("accuracy", "T=0", "rewind"),
    "plain accuracy T=1.5": ("accuracy", "T=1.5", "plain"),
    "BT accuracy T=1.5": ("accuracy", "T=1.5", "rewind"),
    "error repair T=1.5": ("repair", "T=1.5"),
    "plain accuracy T=2": ("accuracy", "T=2", "plain"),
    "BT accuracy T=2": ("accuracy", "T=2", "rewind"),
    "error repair T=2": ("repair", "T=2"),
    "recovery, wrong digit": ("recovery_rate",),
    "recovery, wrong non-digit": ("recovery_rate_out_of_distribution",),
    "false backtracks": ("false_backtrack_rate",),
}
"""Row label -> path into eval.json; ("repair", T) is computed from the accuracies."""
GOALS: dict[str, tuple[str, float]] = {
    "greedy accuracy": (">=", 0.99),
    "error repair T=1.5": (">=", 0.75),
    "error repair T=2": (">=", 0.75),
    "recovery, wrong digit": (">=", 0.90),
    "recovery, wrong non-digit": (">=", 0.90),
    "false backtracks": ("<=", 0.01),
}
"""What every run must reach: the worst run is held to it, not the mean."""


def run_directory(out: Path, seed: int, threads: int) -> Path:
    return out / f"seed{seed}-threads{threads}"


def train_and_evaluate(
    config: str, out: Path, seed: int, threads: int, overrides: list[str], problems: int | None
) -> dict:
    directory = run_directory(out, seed, threads)
    result = directory / "eval.json"
    # a waiting thread must not spin: with two runs sharing the cores, spinning slows both
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    if not result.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training.train",
                "--config",
                config,
                f"training.seed={seed}",
                f"training.threads={threads}",
                f"training.output_dir={directory}",
                *overrides,
            ],
            check=True,
            env=env,
        )
        evaluate = [sys.executable, "-m", "training.evaluate", "--checkpoint", str(directory)]
        evaluate += ["--modes", "rewind", "--threads", str(threads)]
        if problems:
            evaluate += ["--problems", str(problems)]
        subprocess.run(evaluate, check=True, env=env)
    return json.loads(result.read_text())


def lookup(figures: dict, path: tuple[str, ...]) -> float | None:
    if path[0] == "repair":
        # reported at every temperature here (eval.json only where plain is below 90%): a seed
        # table must show the worst run even where that run's plain decoding rarely errs
        plain = lookup(figures, ("accuracy", path[1], "plain"))
        with_bt = lookup(figures, ("accuracy", path[1], "rewind"))
        if plain is None or with_bt is None or plain >= 1:
            return None
        return (with_bt - plain) / (1 - plain)
    value: object = figures
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def summarise(runs: dict[str, dict]) -> dict[str, dict]:
    """Per figure: each run's value, and min / mean / max over the runs that report it."""
    table: dict[str, dict] = {}
    for label, path in FIGURES.items():
        values = {name: lookup(figures, path) for name, figures in runs.items()}
        present = [value for value in values.values() if value is not None]
        table[label] = {
            "runs": values,
            "min": min(present) if present else None,
            "mean": statistics.fmean(present) if present else None,
            "max": max(present) if present else None,
        }
    return table


def goal_met(label: str, row: dict) -> str:
    """`yes`/`no` for the worst run against the figure's goal; empty where it has none."""
    if label not in GOALS or row["min"] is None:
        return ""
    op, threshold = GOALS[label]
    worst = row["min"] if op == ">=" else row["max"]
    met = worst >= threshold if op == ">=" else worst <= threshold
    return f"{op} {100 * threshold:g}%: {'yes' if met else 'no'}"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(table: dict[str, dict]) -> str:
    names = list(next(iter(table.values()))["runs"])
    lines = [
        "| figure | goal, every run | min | mean | max | " + " | ".join(names) + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for label, row in table.items():
        cells = [goal_met(label, row), _cell(row["min"]), _cell(row["mean"]), _cell(row["max"])]
        cells += [_cell(row["runs"][name]) for name in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--problems", type=int, default=None, help="held-out problems per run")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at once (each keeps its own thread count)"
    )
    parser.add_argument("overrides", nargs="*", help="section.field=value, as for training.train")
    args = parser.parse_args(argv)
    out = Path(args.out)
    plan = [(seed, threads) for seed in args.seeds for threads in args.threads]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            run_directory(out, seed, threads).name: pool.submit(
                train_and_evaluate, args.config, out, seed, threads, args.overrides, args.problems
            )
            for seed, threads in plan
        }
        runs = {name: future.result() for name, future in futures.items()}
    table = summarise(runs)
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    text = markdown(table)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
