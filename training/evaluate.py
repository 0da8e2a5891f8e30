"""Does backtracking work? Held-out figures for a checkpoint, decoded by the server's decoder.

    make eval                                  # checkpoints/default
    python -m training.evaluate --checkpoint checkpoints/default --problems 300
    python -m training.evaluate --log-events runs/eval.jsonl  # then: make analyze LOG=runs/eval.jsonl

Figures (written to `<checkpoint>/eval.json` and printed; `accuracy.png` plots exact match against
temperature, plain vs backtracking, per decoding mode):

* exact-match accuracy with BT suppressed (`plain`) and with backtracking, per decoding mode
  (`rewind`, `keep`) and temperature (0 = greedy);
* error repair, (with BT - plain) / (1 - plain), where plain accuracy is below 90%;
* recovery rate: a wrong token forced mid-answer, how often the very next decision deletes it,
  apart for a wrong digit (`recovery_rate`) and a wrong non-digit
  (`recovery_rate_out_of_distribution`);
* false backtrack rate: how often BT is the decision on a correct prefix;
* backtracks per answer.

Every generation goes through the server's batch decoder (`backtrack.batch`) with `backtrack_policy="argmax"` (or `never`
for plain), exactly as the server decodes.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from backtrack.batch import decode_all, final_event
from backtrack.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from backtrack.device import resolve_dtype
from backtrack.params import MODES, BacktrackPolicy, GenerationParams, Mode
from backtrack.prompts import PromptEncoder
from backtrack.threads import configure_threads
from backtrack.tokens import embedding_rows
from training.config import Config, config_from_dict
from training.data import encode, load_problems
from training.errors import in_distribution_source, out_of_distribution_source
from training.event_records import EvalEventLog
from training.plots import save_accuracy_plot
from training.tasks import Problem

TEMPERATURES = (0.0, 1.0, 1.5, 2.0)
BATCH_ROWS = 64
"""Problems decoded at once: one batched forward per step advances all of them."""
REPAIR_BELOW = 0.9
"""Error repair is reported only where plain accuracy is below this: elsewhere it is noise."""


@dataclass(frozen=True)
class Subject:
    """What is evaluated: the model, how to prompt it, and the problems it must solve."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    backtrack_id: int
    problems: list[Problem]
    prompts: PromptEncoder
    """The checkpoint's own prompt encoder: the one the server uses."""
    event_log: EvalEventLog | None = None
    """Where each backtracking run's decoded problems go (`--log-events`), if anywhere."""


@dataclass(frozen=True)
class RunFigures:
    accuracy: float
    backtracks_per_answer: float


def decoding_params(
    temperature: float,
    policy: BacktrackPolicy,
    mode: Mode,
    seed: int,
    length: int,
    threshold: float | None = None,
) -> GenerationParams:
    """One problem's decoding (`threshold`: the `threshold` policy's, default the server's)."""
    sampled = temperature > 0
    extra = {} if threshold is None else {"backtrack_threshold": threshold}
    return GenerationParams(
        max_new_tokens=length,
        do_sample=sampled,
        temperature=temperature if sampled else 1.0,
        seed=seed,
        mode=mode,
        backtrack_policy=policy,
        **extra,
    )


def run_decoding(
    subject: Subject, temperature: float, policy: BacktrackPolicy, mode: Mode
) -> RunFigures:
    """Exact match over the problems, and the mean number of backtracks per answer.

    Every problem is one row of the server's batch decoder, seeded by its index, so the figures
    do not depend on how many rows share a batch.
    """
    requests = []
    for index, problem in enumerate(subject.problems):
        prompt_ids = subject.prompts.completion(problem.prompt)
        length = len(subject.tokenizer.encode(problem.response, add_special_tokens=False)) + 4
        requests.append(
            (prompt_ids, decoding_params(temperature, policy, mode, seed=index, length=length))
        )
    correct, backtracks = 0, 0
    for index, events in decode_all(
        subject.model, subject.tokenizer, subject.backtrack_id, requests, max_rows=BATCH_ROWS
    ):
        done = final_event(events)
        correct += done.generated_text == subject.problems[index].response
        if subject.event_log is not None and policy != "never":
            run = {"temperature": temperature, "mode": mode, "backtrack_policy": policy}
            subject.event_log.write(index, subject.problems[index], events, run)
        backtracks += done.backtracks
    count = max(1, len(subject.problems))
    return RunFigures(correct / count, backtracks / count)


def recovery_rate(subject: Subject, seed: int = 0, kind: str = "in_distribution") -> float:
    """Force a wrong token at a random answer position: is the next decision BT?

    `kind` is the wrong token's source: `in_distribution` (a plausible one: a wrong digit) or
    `out_of_distribution` (one no answer holds: a letter, a `+`), the errors sampling at high
    temperature mostly makes. The row may write one token after the forced ones, so its first
    decision either deletes the wrong token (recovered) or ends the row.
    """
    examples = [encode(subject.prompts, problem) for problem in subject.problems]
    special = [*subject.tokenizer.all_special_ids, subject.backtrack_id]
    if kind == "in_distribution":
        source = in_distribution_source(examples, special)
    else:
        vocab = embedding_rows(subject.model)
        source = out_of_distribution_source(examples, vocab, special)
    rng = random.Random(seed)
    requests, forced = [], []
    for example in examples:
        answer = list(example.response_ids[:-1]) or list(example.response_ids)
        split = rng.randrange(len(answer))
        wrong = source.draw(rng, 1, avoid=answer[split])[0]
        params = decoding_params(0.0, "argmax", "rewind", seed=0, length=split + 2)
        requests.append((list(example.prompt_ids), params))
        forced.append([*answer[:split], wrong])
    recovered = 0
    for index, events in decode_all(
        subject.model,
        subject.tokenizer,
        subject.backtrack_id,
        requests,
        max_rows=BATCH_ROWS,
        forced=forced,
    ):
        removed = final_event(events).removed_tokens
        recovered += bool(removed) and removed[0]["index"] == len(forced[index]) - 1
    return recovered / max(1, len(examples))


@torch.inference_mode()
def false_backtrack_rate(subject: Subject) -> float:
    """Share of correct-prefix positions (prompt end to last answer token) whose argmax is BT."""
    fired, positions = 0, 0
    for problem in subject.problems:
        example = encode(subject.prompts, problem)
        ids = [*example.prompt_ids, *example.response_ids]
        logits = subject.model(torch.tensor([ids], device=subject.model.device)).logits[0]
        start, end = len(example.prompt_ids) - 1, len(ids) - 1
        choices = logits[start:end].argmax(dim=-1)
        fired += int((choices == subject.backtrack_id).sum())
        positions += end - start
    return fired / max(1, positions)


def error_repair(plain: float, with_backtrack: float) -> float | None:
    """Share of plain decoding's errors that backtracking repaired; None where plain rarely errs."""
    if plain >= REPAIR_BELOW:
        return None
    return (with_backtrack - plain) / (1 - plain)


def evaluate(
    subject: Subject,
    temperatures: tuple[float, ...] = TEMPERATURES,
    modes: tuple[Mode, ...] = MODES,
) -> dict:
    accuracy: dict[str, dict[str, float]] = {}
    backtracks: dict[str, dict[str, float]] = {}
    repair: dict[str, dict[str, float]] = {}
    for temperature in temperatures:
        key = f"T={temperature:g}"
        plain = run_decoding(subject, temperature, "never", "rewind").accuracy
        accuracy[key], backtracks[key] = {"plain": plain}, {}
        for mode in modes:
            figures = run_decoding(subject, temperature, "argmax", mode)
            accuracy[key][mode], backtracks[key][mode] = (
                figures.accuracy,
                figures.backtracks_per_answer,
            )
            repaired = error_repair(plain, figures.accuracy)
            if repaired is not None:
                repair.setdefault(key, {})[mode] = repaired
    return {
        "problems": len(subject.problems),
        "accuracy": accuracy,
        "error_repair": repair,
        "backtracks_per_answer": backtracks,
        "recovery_rate": recovery_rate(subject),
        "recovery_rate_out_of_distribution": recovery_rate(subject, kind="out_of_distribution"),
        "false_backtrack_rate": false_backtrack_rate(subject),
    }


def held_out_problems(config: Config, count: int | None) -> list[Problem]:
    """The evaluation split the checkpoint was trained beside (never trained on)."""
    _, problems = load_problems(config.data)
    return problems[:count] if count else problems


def format_report(figures: dict) -> str:
    modes = [mode for mode in MODES if any(mode in row for row in figures["accuracy"].values())]
    lines = [
        f"checkpoint {figures['checkpoint']} (objective {figures['objective']}), "
        f"{figures['problems']} held-out problems",
        "exact match      plain  " + "  ".join(f"BT,{mode:6s}" for mode in modes),
    ]
    for key, row in figures["accuracy"].items():
        cells = "  ".join(f"{100 * row[mode]:8.1f}%" for mode in modes)
        lines.append(f"  {key:8s}      {100 * row['plain']:5.1f}%  {cells}")
    for key, row in figures["error_repair"].items():
        shown = ", ".join(f"{mode} {100 * value:.0f}%" for mode, value in row.items())
        lines.append(f"error repair at {key}: {shown}")
    per_answer = figures["backtracks_per_answer"]
    lines += [
        f"recovery rate         {100 * figures['recovery_rate']:.1f}% (a plausible wrong token: "
        f"a wrong digit, a wrong number word), "
        f"{100 * figures.get('recovery_rate_out_of_distribution', 0):.1f}% (a token no answer holds)",
        f"false backtrack rate  {100 * figures['false_backtrack_rate']:.2f}%",
        "backtracks per answer "
        + ", ".join(f"{key} {row.get('rewind', 0):.2f}" for key, row in per_answer.items()),
    ]
    return "\n".join(lines)


def evaluate_checkpoint(
    checkpoint: LoadedCheckpoint,
    count: int | None,
    temperatures: tuple[float, ...],
    modes: tuple[Mode, ...],
    event_log: EvalEventLog | None = None,
) -> dict:
    config = config_from_dict(checkpoint.metadata.training_config or {})
    problems = held_out_problems(config, count)
    subject = Subject(
        checkpoint.model,
        checkpoint.tokenizer,
        checkpoint.backtrack_id,
        problems,
        checkpoint.prompts,
        event_log,
    )
    figures = evaluate(subject, temperatures, modes)
    return {
        "checkpoint": str(checkpoint.path),
        "objective": checkpoint.metadata.objective,
        **figures,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate a backtracking checkpoint.")
    parser.add_argument("--checkpoint", default="checkpoints/default")
    parser.add_argument(
        "--problems", type=int, default=None, help="first N held-out problems (default: all)"
    )
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads for the batched forwards (default: the CPUs this process may use)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "auto"],
        default="float32",
        help="weights and compute dtype (auto: as the server picks it)",
    )
    parser.add_argument("--log-events", type=Path, help="JSONL of every decoded problem's edits")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    device = torch.device("cpu")
    try:
        checkpoint = load_checkpoint(args.checkpoint, device, resolve_dtype(args.dtype, device))
    except CheckpointError as error:
        parser.error(f"{error} (make train writes checkpoints/default)")
    event_log = EvalEventLog(args.log_events) if args.log_events else None
    figures = evaluate_checkpoint(
        checkpoint, args.problems, tuple(args.temperatures), tuple(args.modes), event_log
    )
    suffix = "" if args.dtype == "float32" else f".{args.dtype}"
    output = Path(args.checkpoint) / f"eval{suffix}.json"
    output.write_text(json.dumps(figures, indent=2) + "\n")
    plot = save_accuracy_plot(figures, Path(args.checkpoint) / f"accuracy{suffix}.png")
    print(format_report(figures))
    print(f"written to {output} and {plot}")
    if event_log is not None:
        event_log.close()
        print(f"{event_log.written} decoded problems logged to {event_log.path}")


if __name__ == "__main__":
    main()
