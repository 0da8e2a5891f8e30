"""`python -m training.analyze`: exact figures on a hand-written log, and evaluation's records."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backtrack.generation_log import Edit, event_entries
from backtrack.prompts import PromptEncoder
from tests.training.test_evaluate import non_digit_deleter
from training import analyze
from training.config import Config
from training.evaluate import Subject, held_out_problems, run_decoding
from training.event_records import EvalEventLog


def token(index: int, text: str, logprob: float, kind: str = "digit") -> dict:
    return {"t": "token", "index": index, "kind": kind, "logprob": logprob, "text": text}


def backtrack(index: int, text: str, logprob: float, depth: int, kind: str = "digit") -> dict:
    entry = {"t": "backtrack", "index": index, "depth": depth, "kind": kind, "logprob": logprob}
    return {**entry, "text": text}


def record(events: list[dict], **fields) -> dict:
    base = {"schema_version": 1, "source": "evaluate", "finish_reason": "eos", "events": events}
    return base | fields


HAND_WRITTEN = [
    # "13" -> the wrong 3 deleted, then the right 2: a true deletion, repaired
    record(
        [token(0, "1", -0.1), token(1, "3", -2.0), backtrack(1, "3", -2.0, 1), token(1, "2", -0.2)],
        expected="12",
        text="12",
    ),
    # "45" was right: two false deletions in a row (depth 2), then "4" right again, "6" wrong
    record(
        [
            *[token(0, "4", -0.5), token(1, "5", -1.0), backtrack(1, "5", -1.0, 1)],
            *[backtrack(0, "4", -0.5, 2), token(0, "4", -0.3), token(1, "6", -0.4)],
        ],
        expected="45",
        text="46",
    ),
    # a server line without text: counted, never judged
    {
        "schema_version": 1,
        "source": "server",
        "finish_reason": "length",
        "events": [
            {"t": "token", "index": 0, "kind": "letter", "logprob": -3.0},
            {"t": "backtrack", "index": 0, "depth": 1, "kind": "letter", "logprob": -3.0},
            {"t": "token", "index": 0, "kind": "letter", "logprob": -0.5},
        ],
    },
]


def test_a_hand_written_log_gives_the_exact_figures():
    figures = analyze.analyze(HAND_WRITTEN)
    assert figures["records"] == 3 and figures["sources"] == {"evaluate": 2, "server": 1}
    assert (figures["tokens_written"], figures["deletions"]) == (9, 4)
    assert figures["positions"] == {0: 2, 1: 2}
    assert figures["depths"] == {1: 2, 2: 1} and figures["max_depth"] == 2
    assert figures["kinds"]["digit"] == {"written": 7, "deleted": 3, "deleted_share": 3 / 7}
    assert figures["kinds"]["letter"] == {"written": 2, "deleted": 1, "deleted_share": 0.5}
    assert figures["mean_logprob"]["deleted"] == pytest.approx(-6.5 / 4)
    assert figures["mean_logprob"]["kept"] == pytest.approx(-1.5 / 5)
    assert figures["judged"] == {
        "records": 2,
        "exact_match": 0.5,
        "deletions": 3,
        "false_deletions": 2,
        "false_deletion_rate": 2 / 3,
        "next_tokens_after_deletion": 2,
        "correct_next_tokens": 2,
        "correct_next_rate": 1.0,
    }


def test_deleting_a_token_that_adds_no_text_is_never_a_false_deletion():
    """A special token (`<pad>`) shows as no text: the prefix stays right, the token was not."""
    events = [token(0, "1", -0.1), token(1, "", -9.0, "other"), backtrack(1, "", -9.0, 1, "other")]
    judged = analyze.analyze([record(events, expected="12", text="1")])["judged"]
    assert (judged["deletions"], judged["false_deletions"]) == (1, 0)


def test_server_records_alone_are_never_judged():
    assert analyze.analyze(HAND_WRITTEN[2:])["judged"] is None


@given(st.lists(st.booleans(), max_size=30), st.text(alphabet="0123456789", max_size=8))
def test_deletions_of_a_right_prefix_are_all_false_and_depths_add_up(deletes, expected):
    """Writing the expected answer and deleting some of it: every deletion is a false one."""
    edits, shown = [], 0
    for delete in deletes:
        if delete and shown:
            shown -= 1
            edits.append(Edit(True, shown, 0, expected[shown], -1.0))
        elif shown < len(expected):
            edits.append(Edit(False, shown, 0, expected[shown], -0.1))
            shown += 1
    figures = analyze.analyze([record(event_entries(edits, True), expected=expected)])
    deletions = sum(edit.deleted for edit in edits)
    assert figures["deletions"] == deletions
    assert sum(depth * n for depth, n in figures["depths"].items()) == deletions
    if deletions:
        assert figures["judged"]["false_deletions"] == deletions


def test_the_command_prints_json_and_writes_the_plot(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in HAND_WRITTEN) + "\n")
    analyze.main([str(log), "--json", "--plot", str(tmp_path / "plot.png")])
    figures = json.loads(capsys.readouterr().out)
    assert figures["judged"]["false_deletions"] == 2 and figures["positions"] == {"0": 2, "1": 2}
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    analyze.main([str(log)])
    report = capsys.readouterr().out
    assert "false deletions      2 of 3" in report and (tmp_path / "events.jsonl.png").exists()


def test_by_a_field_gives_the_figures_of_each_value(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in HAND_WRITTEN))
    analyze.main([str(log), "--json", "--by", "source", "--plot", str(tmp_path / "p.png")])
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert {name: part["deletions"] for name, part in groups.items()} == {
        '"evaluate"': 3,
        '"server"': 1,
    }


def test_a_line_that_is_not_a_record_is_named(tmp_path, capsys):
    log = tmp_path / "events.jsonl"
    log.write_text(json.dumps(HAND_WRITTEN[0]) + "\n{not json\n")
    with pytest.raises(SystemExit) as exit_info:
        analyze.main([str(log)])
    assert exit_info.value.code == 2 and f"{log}:2" in capsys.readouterr().err


def test_evaluation_logs_each_backtracking_problem_with_its_expected_answer(
    char_tokenizer, backtrack_id, tmp_path
):
    """A model that deletes every non-digit right after writing it: each decoded problem is one
    line whose edits replay to its answer, and no deletion is judged false (answers are digits)."""
    model = non_digit_deleter(char_tokenizer, backtrack_id)
    problems = held_out_problems(Config(), 6)
    log = EvalEventLog(tmp_path / "eval.jsonl")
    subject = Subject(
        model, char_tokenizer, backtrack_id, problems, PromptEncoder(char_tokenizer), log
    )
    run_decoding(subject, 0.0, "never", "rewind")  # plain decoding deletes nothing: not logged
    run_decoding(subject, 0.0, "argmax", "rewind")
    log.close()
    records = analyze.read_records([tmp_path / "eval.jsonl"])
    assert sorted(r["problem"] for r in records) == list(range(6))
    for line in records:
        assert line["expected"] == problems[line["problem"]].response
        assert line["run"] == {"temperature": 0.0, "mode": "rewind", "backtrack_policy": "argmax"}
        shown: list[str] = []
        for event in line["events"]:
            if event["t"] == "token":
                shown.append(event["text"])
            else:
                assert shown.pop() == event["text"] and event["kind"] != "digit"
        assert "".join(shown) == line["text"]
        assert sum(e["t"] == "backtrack" for e in line["events"]) == line["backtracks"]
    figures = analyze.analyze(records)
    assert figures["deletions"] > 0 and figures["judged"]["false_deletions"] == 0
