"""Does backtracking beat the honest baselines on every seed? Train the BT model and plain SFT of
one config under several seeds, compare each pair, and hold the worst seed to the goals.

    make self-correction                                          # configs/self_correction.yaml, seeds 0 1 2
    python -m training.compare_seeds --config configs/self_correction.yaml --seeds 0 1 2

For each seed S the two runs train at once, one thread each, in their own processes
(`training.train`, into `<out>/seed<S>` and `<out>/seed<S>-plain`, the second with
`backtrack.use_backtrack=false`), then `training.compare` puts them side by side on the held-out
problems (`compare.json` in the BT run's directory). A finished step is not redone. The table of
every seed's rows, and whether each goal holds for the worst seed, is printed and written to
`<out>/summary.md` and `summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BT, SUPPRESSED, PLAIN = (
    "BT model, greedy with BT (rewind)",
    "BT model, greedy, BT suppressed",
    "plain SFT, greedy",
)
MARGIN = 0.10
"""Greedy with BT must beat plain SFT and the same model with BT suppressed by this much."""
MAX_FALSE_BACKTRACKS = 0.01


def _train(config: str, directory: Path, seed: int, overrides: list[str]) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "training.train", "--config", config, f"training.seed={seed}",
        "training.threads=1", f"training.output_dir={directory}", *overrides,
    ]  # fmt: skip
    # a waiting thread must not spin: with two runs sharing the cores, spinning slows both
    return subprocess.Popen(command, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})


def train_and_compare(
    config: str, out: Path, seed: int, overrides: list[str], problems: int
) -> dict:
    backtracking, plain = out / f"seed{seed}", out / f"seed{seed}-plain"
    result = backtracking / "compare.json"
    if not result.is_file():
        runs = [
            _train(config, directory, seed, [*overrides, *extra])
            for directory, extra in (
                (backtracking, []),
                (plain, ["backtrack.use_backtrack=false"]),
            )
            if not (directory / "model.safetensors").is_file()
        ]
        if any(run.wait() != 0 for run in runs):
            raise SystemExit(f"training seed {seed} failed")
        subprocess.run(
            [
                sys.executable, "-m", "training.compare", "--backtrack", str(backtracking),
                "--plain", str(plain), "--problems", str(problems), "--threads", "2",
            ],
            check=True,
        )  # fmt: skip
    return json.loads(result.read_text())


def rows_of(figures: dict) -> dict[str, dict]:
    return {row["name"]: row for row in figures["rows"]}


def best_vote(figures: dict) -> dict:
    """The plain model's majority vote over as many samples as make its forwards match or exceed
    BT decoding's (`training.compare` picks that count)."""
    n = figures["votes_matching_bt_forwards"]
    return rows_of(figures)[f"plain SFT, majority of {n} samples"]


def goals(runs: dict[int, dict]) -> dict[str, bool]:
    """Each goal, held to the worst seed."""
    margins = []
    for figures in runs.values():
        rows = rows_of(figures)
        margins.append(
            rows[BT]["accuracy"] - max(rows[PLAIN]["accuracy"], rows[SUPPRESSED]["accuracy"])
        )
    return {
        f"greedy with BT at least {100 * MARGIN:g} points above plain SFT and BT suppressed":
            min(margins) >= MARGIN - 1e-9,
        f"false backtracks at most {100 * MAX_FALSE_BACKTRACKS:g}%":
            max(f["false_backtrack_rate"] for f in runs.values()) <= MAX_FALSE_BACKTRACKS,
        "greedy with BT at least the plain model's majority vote at equal forwards":
            all(rows_of(f)[BT]["accuracy"] >= best_vote(f)["accuracy"] for f in runs.values()),
    }  # fmt: skip


def _percent(row: dict) -> str:
    return f"{100 * row['accuracy']:.1f}% ({row['forwards_per_answer']:.2f})"


def markdown(runs: dict[int, dict]) -> str:
    lines = [
        "| seed | greedy with BT (forwards) | BT suppressed | plain SFT | plain majority vote "
        "| plain best of n (oracle) | backtracks / answer | repaired | false backtracks |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, figures in runs.items():
        rows = rows_of(figures)
        vote = best_vote(figures)
        oracle = rows[
            vote["name"].replace("majority of", "best of") + " (oracle, needs a verifier)"
        ]
        lines.append(
            f"| {seed} | {_percent(rows[BT])} | {_percent(rows[SUPPRESSED])} "
            f"| {_percent(rows[PLAIN])} | {vote['name'][len('plain SFT, ') :]}: {_percent(vote)} "
            f"| {_percent(oracle)} | {rows[BT]['backtracks_per_answer']:.2f} "
            f"| {100 * rows[BT].get('repaired', 0.0):.1f}% "
            f"| {100 * figures['false_backtrack_rate']:.2f}% |"
        )
    lines.append("")
    lines += [f"- {goal}: {'yes' if met else 'no'}" for goal, met in goals(runs).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/self_correction.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/self_correction")
    parser.add_argument("--problems", type=int, default=500, help="held-out problems compared")
    parser.add_argument("overrides", nargs="*", help="section.field=value, as for training.train")
    args = parser.parse_args(argv)
    out = Path(args.out)
    runs = {
        seed: train_and_compare(args.config, out, seed, args.overrides, args.problems)
        for seed in args.seeds
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(
        json.dumps({"runs": runs, "goals": goals(runs)}, indent=2) + "\n"
    )
    text = markdown(runs)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
