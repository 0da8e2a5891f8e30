"""When to backtrack: the `threshold` policy's curve on held-out problems, and a threshold chosen
on one half of them and checked on the other.

    make calibrate                                     # checkpoints/default
    python -m training.calibrate --checkpoint DIR --problems 600

The `threshold` policy deletes when p(BT), under the untempered distribution with the rewind's
bans, passes `backtrack_threshold`. For every threshold of `THRESHOLDS` the curve gives, from
teacher-forced forwards (no decoding, so each figure is exact for the problems):

* `false_backtracks`: the share of correct-prefix positions (prompt end to last answer token)
  where p(BT) passes it: a deletion of a right token;
* `recovery`: the share of forced wrong tokens (a plausible wrong one at a random answer
  position, as `training.evaluate.recovery_rate`) right after which p(BT) passes it.

The rule, on the calibration half: of the thresholds whose false-backtrack rate is at most
`MAX_FALSE_BACKTRACKS` (1% of positions), the one whose decoding (greedy and sampled, averaged)
is most accurate. Recovery alone would pick the lowest such threshold, but a false deletion costs
more than a position: the deleted right token is banned there, so the answer goes wrong (on the
default checkpoint 0.05 keeps false deletions at 0.9% and recovers 94%, yet decodes 95% greedy
against argmax's 99%). The chosen threshold is then decoded on the other half, greedy and
sampled, beside `argmax` and BT suppressed, with forwards per answer (a forward per decision,
counted as `training.compare.forwards` counts them).
Written to `<checkpoint>/calibration.json` and `calibration.png`.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from backtrack.checkpoint import CheckpointError, load_checkpoint
from backtrack.params import BacktrackPolicy
from backtrack.threads import configure_threads
from training.compare import decode
from training.config import config_from_dict
from training.data import encode
from training.errors import in_distribution_source
from training.evaluate import Subject, held_out_problems

THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MAX_FALSE_BACKTRACKS = 0.01
TEMPERATURES = (0.0, 1.5)


@dataclass(frozen=True)
class BacktrackOdds:
    """p(BT) where the prefix is right, and right after a forced wrong token."""

    on_correct: list[float]
    after_error: list[float]


def _p_backtrack(subject: Subject, ids: list[int]) -> torch.Tensor:
    """p(BT) after each prefix of `ids` (position i: given ids[: i + 1])."""
    logits = subject.model(torch.tensor([ids], device=subject.model.device)).logits[0]
    return torch.softmax(logits.float(), dim=-1)[:, subject.backtrack_id]


@torch.inference_mode()
def backtrack_odds(subject: Subject, seed: int = 0) -> BacktrackOdds:
    """Both samples of p(BT) over `subject.problems`, one forward per problem and case."""
    examples = [encode(subject.prompts, problem) for problem in subject.problems]
    special = [*subject.tokenizer.all_special_ids, subject.backtrack_id]
    source = in_distribution_source(examples, special)
    rng = random.Random(seed)
    on_correct: list[float] = []
    after_error: list[float] = []
    for example in examples:
        ids = [*example.prompt_ids, *example.response_ids]
        start, end = len(example.prompt_ids) - 1, len(ids) - 1
        on_correct += _p_backtrack(subject, ids)[start:end].tolist()
        answer = list(example.response_ids[:-1]) or list(example.response_ids)
        split = rng.randrange(len(answer))
        wrong = source.draw(rng, 1, avoid=answer[split])[0]
        forced = [*example.prompt_ids, *answer[:split], wrong]
        after_error.append(float(_p_backtrack(subject, forced)[-1]))
    return BacktrackOdds(on_correct, after_error)


def share_above(values: list[float], threshold: float) -> float:
    return sum(value > threshold for value in values) / max(1, len(values))


def curve(odds: BacktrackOdds) -> list[dict[str, float]]:
    return [
        {
            "threshold": threshold,
            "false_backtracks": share_above(odds.on_correct, threshold),
            "recovery": share_above(odds.after_error, threshold),
        }
        for threshold in THRESHOLDS
    ]


def choose_threshold(
    points: list[dict[str, float]],
    accuracy: dict[float, float],
    budget: float = MAX_FALSE_BACKTRACKS,
) -> float:
    """Of the thresholds within the false-backtrack budget, the one whose decoding is most
    accurate (`accuracy`: threshold -> mean exact match), the higher one on a tie; the highest
    threshold when none is within the budget."""
    within = [p["threshold"] for p in points if p["false_backtracks"] <= budget]
    if not within:
        return max(p["threshold"] for p in points)
    return max(within, key=lambda threshold: (accuracy[threshold], threshold))


def decoded(
    subject: Subject, temperature: float, policy: BacktrackPolicy, threshold: float = 0.3
) -> dict[str, float]:
    """Exact match, backtracks and forwards per answer of one decoding of the problems
    (`training.compare.decode`, request i seeded i)."""
    answers = decode(subject, temperature, policy, threshold=threshold)
    count = max(1, len(answers))
    expected = [problem.response for problem in subject.problems]
    return {
        "accuracy": sum(a.text == e for a, e in zip(answers, expected, strict=True)) / count,
        "backtracks_per_answer": sum(a.backtracks for a in answers) / count,
        "forwards_per_answer": sum(a.forwards for a in answers) / count,
    }


def calibrate(subject: Subject) -> dict:
    """The curve on each half, the threshold chosen on the first, decoded on the second."""
    half = len(subject.problems) // 2
    tuning = Subject(**{**subject.__dict__, "problems": subject.problems[:half]})
    held = Subject(**{**subject.__dict__, "problems": subject.problems[half:]})
    tuning_curve, held_curve = curve(backtrack_odds(tuning)), curve(backtrack_odds(held, seed=1))
    tuning_accuracy = {
        threshold: sum(
            decoded(tuning, temperature, "threshold", threshold)["accuracy"]
            for temperature in TEMPERATURES
        )
        / len(TEMPERATURES)
        for threshold in THRESHOLDS
    }
    chosen = choose_threshold(tuning_curve, tuning_accuracy)
    decoding: dict[str, dict[str, dict[str, float]]] = {}
    for temperature in TEMPERATURES:
        key = f"T={temperature:g}"
        decoding[key] = {
            "plain": decoded(held, temperature, "never"),
            "argmax": decoded(held, temperature, "argmax"),
            f"threshold {chosen:g}": decoded(held, temperature, "threshold", chosen),
        }
    at_chosen = next(p for p in held_curve if p["threshold"] == chosen)
    return {
        "problems": {"calibration": half, "held_out": len(subject.problems) - half},
        "max_false_backtracks": MAX_FALSE_BACKTRACKS,
        "chosen_threshold": chosen,
        "calibration_accuracy": {f"{t:g}": a for t, a in tuning_accuracy.items()},
        "held_out_at_chosen": at_chosen,
        "curve_calibration": tuning_curve,
        "curve_held_out": held_curve,
        "decoding_held_out": decoding,
    }


def format_report(figures: dict) -> str:
    lines = [
        f"threshold chosen on {figures['problems']['calibration']} problems: "
        f"{figures['chosen_threshold']:g} (false backtracks at most "
        f"{100 * figures['max_false_backtracks']:g}%)",
        "threshold  false BT (held out)  recovery (held out)",
    ]
    for point in figures["curve_held_out"]:
        lines.append(
            f"  {point['threshold']:5.2f}    {100 * point['false_backtracks']:8.2f}%"
            f"          {100 * point['recovery']:6.1f}%"
        )
    for key, rows in figures["decoding_held_out"].items():
        for name, row in rows.items():
            lines.append(
                f"{key:6s} {name:16s} exact match {100 * row['accuracy']:5.1f}%, "
                f"{row['backtracks_per_answer']:.2f} BT and "
                f"{row['forwards_per_answer']:.1f} forwards per answer"
            )
    return "\n".join(lines)


def save_plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    points = figures["curve_held_out"]
    thresholds = [p["threshold"] for p in points]
    figure, axis = pyplot.subplots(figsize=(6, 4))
    axis.plot(thresholds, [100 * p["recovery"] for p in points], marker="o", label="recovery")
    axis.plot(
        thresholds, [100 * p["false_backtracks"] for p in points], marker="o", label="false BT"
    )
    axis.axvline(figures["chosen_threshold"], linestyle="--", color="grey", label="chosen")
    axis.set_xlabel("backtrack_threshold (p(BT) above it deletes)")
    axis.set_ylabel("% of positions (held out)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Calibrate the threshold backtrack policy.")
    parser.add_argument("--checkpoint", default="checkpoints/default")
    parser.add_argument("--problems", type=int, default=None, help="held-out problems (all)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    try:
        checkpoint = load_checkpoint(args.checkpoint, torch.device("cpu"), torch.float32)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    config = config_from_dict(checkpoint.metadata.training_config or {})
    subject = Subject(
        checkpoint.model,
        checkpoint.tokenizer,
        checkpoint.backtrack_id,
        held_out_problems(config, args.problems),
        checkpoint.prompts,
    )
    figures = {"checkpoint": str(checkpoint.path), **calibrate(subject)}
    Path(checkpoint.path, "calibration.json").write_text(json.dumps(figures, indent=2) + "\n")
    save_plot(figures, Path(checkpoint.path, "calibration.png"))
    print(format_report(figures))


if __name__ == "__main__":
    main()
