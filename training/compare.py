"""Does backtracking beat the honest baselines at the same number of forward passes?

    python -m training.compare --backtrack checkpoints/self_correction \\
        --plain checkpoints/self_correction_plain --problems 500

Rows, each with exact match on the held-out problems and forward passes per answer:

* the backtracking model, greedy, BT taken when it is the argmax (`rewind`): the product;
* the same model with BT suppressed (what its training taught apart from deleting);
* plain SFT on the same data without errors (`backtrack.use_backtrack=false`), greedy;
* the plain model's majority vote over n samples (temperature `--vote-temperature`), n chosen so
  its forwards per answer match or exceed the BT row's, plus any `--votes` counts asked for;
* the plain model's best of those n (right if any sample is right): an oracle needing a
  verifier, shown as the ceiling that sampling could reach, never as a baseline.

A decision costs one forward (the first one's logits come from the prompt's prefill): an answer's
forwards are its ordinary tokens drawn (EOS included, deleted ones too) plus its deletions (each
re-feeds the token before), plus the final review of a length-limited answer. False backtracks
are reported twice: BT as the argmax on a correct prefix (teacher-forced, as `training.evaluate`
counts it), and correct tokens deleted during greedy decoding, per answer. "Own errors caught"
asks what backtracking at greedy decoding depends on: at the first wrong token of the model's
own BT-suppressed answer, is BT its next argmax? On a search task the mistake shows itself only
later, so "repaired" counts the answers that held a wrong token at some point and still ended
right.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from backtrack.batch import decode_all, final_event
from backtrack.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from backtrack.events import BacktrackEvent, DoneEvent, Event, TokenEvent
from backtrack.params import BacktrackPolicy
from backtrack.threads import configure_threads
from training.config import config_from_dict
from training.data import encode
from training.evaluate import BATCH_ROWS, Subject, decoding_params, false_backtrack_rate
from training.evaluate import held_out_problems as split_of
from training.on_policy import mine


def forwards(done: DoneEvent, may_backtrack: bool) -> int:
    """Model forwards one answer cost: one per decision (module docstring). A length-limited
    answer took a last decision reviewing its final token only while a deletion was possible."""
    reviewed = (
        done.finish_reason == "length" and may_backtrack and not done.backtrack_budget_exhausted
    )
    return done.sampled_tokens + done.backtracks + reviewed


@dataclass(frozen=True)
class Answer:
    text: str
    forwards: int
    backtracks: int
    correct_deletions: int
    strayed: bool = False
    """At some point the answer held a token that was wrong (its prefix left the expected one)."""


def decode(
    subject: Subject,
    temperature: float,
    policy: BacktrackPolicy,
    seed: int = 0,
    threshold: float | None = None,
) -> list[Answer]:
    """One answer per problem from the server's batch decoder, request i seeded `seed + i`
    (`threshold`: the `threshold` policy's)."""
    requests = []
    for index, problem in enumerate(subject.problems):
        length = len(subject.tokenizer.encode(problem.response, add_special_tokens=False)) + 4
        params = decoding_params(
            temperature, policy, "rewind", seed=seed + index, length=length, threshold=threshold
        )
        requests.append((subject.prompts.completion(problem.prompt), params))
    answers: list[Answer | None] = [None] * len(requests)
    for index, events in decode_all(
        subject.model, subject.tokenizer, subject.backtrack_id, requests, max_rows=BATCH_ROWS
    ):
        done = final_event(events)
        expected = subject.problems[index].response
        deleted, strayed = _deletions(events, expected, subject)
        cost = forwards(done, policy != "never")
        answers[index] = Answer(done.generated_text, cost, done.backtracks, deleted, strayed)
    return [answer for answer in answers if answer is not None]


def _deletions(events: list[Event], expected: str, subject: Subject) -> tuple[int, bool]:
    """(deletions of a token that, with everything before it, matched the expected answer;
    whether the answer ever held a token that did not)."""
    expected_ids = subject.tokenizer.encode(expected, add_special_tokens=False)
    ids: list[int] = []
    count, strayed = 0, False
    for event in events:
        if isinstance(event, TokenEvent):
            del ids[event.index :]
            ids.append(event.id)
            strayed |= ids != expected_ids[: len(ids)]
        elif isinstance(event, BacktrackEvent):
            count += ids[: event.index + 1] == expected_ids[: event.index + 1]
            del ids[event.index :]
    return count, strayed


@dataclass(frozen=True)
class Row:
    name: str
    accuracy: float
    forwards_per_answer: float
    backtracks_per_answer: float = 0.0
    correct_deletions_per_answer: float = 0.0
    repaired: float = 0.0
    """The share of answers that held a wrong token at some point and ended right: the model's
    own mistakes it found and undid (on a search task, wrong branches walked and left)."""


def summarise(name: str, answers: list[Answer], subject: Subject) -> Row:
    count = max(1, len(answers))
    right = sum(a.text == p.response for a, p in zip(answers, subject.problems, strict=True))
    return Row(
        name,
        right / count,
        sum(a.forwards for a in answers) / count,
        sum(a.backtracks for a in answers) / count,
        sum(a.correct_deletions for a in answers) / count,
        sum(
            a.strayed and a.text == p.response
            for a, p in zip(answers, subject.problems, strict=True)
        )
        / count,
    )


def majority(texts: list[str]) -> str:
    """The most frequent answer; a tie goes to the one drawn first."""
    counts = Counter(texts)
    best = max(counts.values())
    return next(text for text in texts if counts[text] == best)


def voting_rows(subject: Subject, samples: list[list[Answer]], n: int) -> list[Row]:
    """Majority vote and the best-of-n oracle over the first `n` samples of every problem."""
    count = max(1, len(subject.problems))
    cost = sum(a.forwards for draws in samples[:n] for a in draws) / count
    votes, oracle = 0, 0
    for index, problem in enumerate(subject.problems):
        texts = [draws[index].text for draws in samples[:n]]
        votes += majority(texts) == problem.response
        oracle += problem.response in texts
    return [
        Row(f"plain SFT, majority of {n} samples", votes / count, cost),
        Row(f"plain SFT, best of {n} samples (oracle, needs a verifier)", oracle / count, cost),
    ]


@torch.inference_mode()
def own_errors_caught(subject: Subject) -> tuple[int, int]:
    """(caught, made): of the model's own first wrong tokens (its BT-suppressed greedy answers,
    as `training.on_policy` mines them), how many are followed by BT as the argmax."""
    examples = [encode(subject.prompts, problem) for problem in subject.problems]
    mined = mine(subject.model, subject.tokenizer, subject.backtrack_id, examples).mined
    caught = 0
    for example, injection in mined.items():
        split = injection.split
        ids = [*example.prompt_ids, *example.response_ids[:split], injection.errors[0]]
        logits = subject.model(torch.tensor([ids], device=subject.model.device)).logits[0, -1]
        caught += int(logits.argmax()) == subject.backtrack_id
    return caught, len(mined)


def compare(
    backtracking: Subject,
    plain: Subject,
    vote_temperature: float = 1.0,
    votes: tuple[int, ...] = (),
) -> dict:
    bt_answers = decode(backtracking, 0.0, "argmax")
    rows = [
        summarise("BT model, greedy with BT (rewind)", bt_answers, backtracking),
        summarise(
            "BT model, greedy, BT suppressed", decode(backtracking, 0.0, "never"), backtracking
        ),
        summarise("plain SFT, greedy", decode(plain, 0.0, "never"), plain),
    ]
    matched = max(1, math.ceil(rows[0].forwards_per_answer / rows[2].forwards_per_answer))
    counts = sorted({matched, *votes})
    samples = [
        decode(plain, vote_temperature, "never", seed=100_000 * (draw + 1))
        for draw in range(max(counts))
    ]
    for n in counts:
        rows += voting_rows(plain, samples, n)
    caught, made = own_errors_caught(backtracking)
    return {
        "problems": len(backtracking.problems),
        "vote_temperature": vote_temperature,
        "votes_matching_bt_forwards": matched,
        "rows": [asdict(row) for row in rows],
        "false_backtrack_rate": false_backtrack_rate(backtracking),
        "own_errors_caught": caught,
        "own_errors_made": made,
    }


def format_table(figures: dict) -> str:
    lines = [
        f"{figures['problems']} held-out problems; votes sampled at "
        f"T={figures['vote_temperature']:g}",
        "| decoding | exact match | forwards / answer | backtracks / answer "
        "| right tokens deleted / answer | repaired |",
        "|---|---|---|---|---|---|",
    ]
    for row in figures["rows"]:
        lines.append(
            f"| {row['name']} | {100 * row['accuracy']:.1f}% | {row['forwards_per_answer']:.2f} "
            f"| {row['backtracks_per_answer']:.3f} | {row['correct_deletions_per_answer']:.3f} "
            f"| {100 * row.get('repaired', 0.0):.1f}% |"
        )
    lines.append(
        f"false backtrack rate (BT argmax on a correct prefix): "
        f"{100 * figures['false_backtrack_rate']:.2f}%"
    )
    lines.append(
        f"own first errors followed by BT as the argmax: {figures['own_errors_caught']} of "
        f"{figures['own_errors_made']}"
    )
    return "\n".join(lines)


def subject_of(checkpoint: LoadedCheckpoint, count: int | None) -> Subject:
    config = config_from_dict(checkpoint.metadata.training_config or {})
    problems = split_of(config, count)
    return Subject(
        checkpoint.model, checkpoint.tokenizer, checkpoint.backtrack_id, problems,
        checkpoint.prompts,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="BT decoding against equal-forward baselines.")
    parser.add_argument("--backtrack", required=True, help="the backtracking checkpoint")
    parser.add_argument("--plain", required=True, help="plain SFT on the same data")
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--vote-temperature", type=float, default=1.0)
    parser.add_argument("--votes", type=int, nargs="*", default=[3, 5])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file (default: <backtrack>/compare.json)")
    args = parser.parse_args(argv)
    configure_threads(args.threads)
    device = torch.device("cpu")
    try:
        loaded = [load_checkpoint(p, device, torch.float32) for p in (args.backtrack, args.plain)]
    except CheckpointError as error:
        parser.error(str(error))
    backtracking, plain = (subject_of(checkpoint, args.problems) for checkpoint in loaded)
    if [p.prompt for p in backtracking.problems] != [p.prompt for p in plain.problems]:
        parser.error("the two checkpoints were trained beside different held-out problems")
    figures = compare(backtracking, plain, args.vote_temperature, tuple(args.votes))
    figures["checkpoints"] = {"backtrack": args.backtrack, "plain": args.plain}
    output = Path(args.out or Path(args.backtrack) / "compare.json")
    output.write_text(json.dumps(figures, indent=2) + "\n")
    print(format_table(figures))
    print(f"written to {output}")


if __name__ == "__main__":
    main()
