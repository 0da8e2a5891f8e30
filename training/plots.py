"""The loss curve of a run, saved as a PNG next to the checkpoint it produced."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a training host

import matplotlib.pyplot as plt


def save_loss_curve(
    log_history: list[dict], path: str | Path, phase_steps: list[int] | None = None
) -> Path:
    """Training and evaluation loss against the step; dotted lines where a curriculum phase began."""
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        points = [(row["step"], row[key]) for row in log_history if key in row and "step" in row]
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, label=label, marker="." if key == "eval_loss" else None)
    for step in phase_steps or []:
        axis.axvline(step, linestyle=":", color="grey")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    if axis.get_legend_handles_labels()[0]:  # a run too short to log has no curve to label
        axis.legend()
    axis.set_title("training loss (dotted: curriculum phase changes)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def save_accuracy_plot(figures: dict, path: str | Path) -> Path:
    """Exact match against temperature: plain decoding vs backtracking, per decoding mode.

    Where the backtracking line sits above the plain one, backtracking repaired sampling errors.
    """
    temperatures = sorted(figures["accuracy"], key=lambda key: float(key.removeprefix("T=")))
    xs = [float(key.removeprefix("T=")) for key in temperatures]
    figure, axis = plt.subplots(figsize=(6, 4))
    series = sorted({mode for row in figures["accuracy"].values() for mode in row})
    for name in ["plain", *[mode for mode in series if mode != "plain"]]:
        ys = [100 * figures["accuracy"][key].get(name, float("nan")) for key in temperatures]
        label = "plain (BT suppressed)" if name == "plain" else f"backtracking, {name}"
        axis.plot(xs, ys, marker="o", label=label)
    axis.set_xlabel("temperature (0 = greedy)")
    axis.set_ylabel("exact match (%)")
    axis.set_ylim(0, 101)
    axis.grid(alpha=0.3)
    axis.legend()
    axis.set_title(f"{figures.get('problems', '?')} held-out problems")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
