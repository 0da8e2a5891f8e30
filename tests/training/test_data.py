"""Data in: JSONL shapes, the chat template, and the bundled task's fixed splits."""

from __future__ import annotations

import json

import pytest

from backtrack.tiny import build_char_tokenizer
from training.config import DataConfig
from training.data import encode, load_problems, prompt_encoder, read_jsonl
from training.tasks import AdditionTask, Problem, WordAdditionTask, number_words


def write_jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


def test_gsm8k_and_generic_rows_both_read(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [{"question": "1+1?", "answer": "2 #### 2"}, {"prompt": "hi", "response": "hello"}],
    )
    assert read_jsonl(path) == [Problem("1+1?", "2 #### 2"), Problem("hi", "hello")]


def test_a_row_of_neither_shape_is_refused_with_its_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"text": "c"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*\['text'\]"):
        read_jsonl(path)


def test_jsonl_files_are_the_splits_when_no_task_is_named(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "response": "b"}] * 3)
    held = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "c", "response": "d"}] * 3)
    config = DataConfig(task=None, train_file=train, eval_file=held, eval_size=2)
    assert load_problems(config) == ([Problem("a", "b")] * 3, [Problem("c", "d")] * 2)


def test_the_chat_template_frames_the_prompt_when_the_tokenizer_has_one():
    tokenizer = build_char_tokenizer()
    plain = encode(prompt_encoder(DataConfig(), tokenizer), Problem("1+1=", "2"))
    assert tokenizer.decode(plain.prompt_ids) == "1+1="
    assert plain.response_ids == (*tokenizer.encode("2"), tokenizer.eos_token_id)
    tokenizer.chat_template = "{% for m in messages %}q: {{ m['content'] }}\n{% endfor %}a: "
    framed = encode(prompt_encoder(DataConfig(), tokenizer), Problem("1+1=", "2"))
    assert tokenizer.decode(framed.prompt_ids) == "q: 1+1=\na: "
    assert framed.response_ids == plain.response_ids
    forced_plain = encode(
        prompt_encoder(DataConfig(prompt_format="plain"), tokenizer), Problem("1+1=", "2")
    )
    assert forced_plain.prompt_ids == plain.prompt_ids


def test_the_addition_task_writes_the_sum_least_significant_digit_first():
    assert AdditionTask(digits=3).problem(123, 989) == Problem("123+989=", "2111")
    assert AdditionTask(digits=2).problem(5, 7) == Problem("05+07=", "210")


def test_the_splits_are_fixed_by_the_seed_and_never_overlap():
    first = AdditionTask(seed=7).splits(2000, 50)
    assert first == AdditionTask(seed=7).splits(2000, 50)
    assert first[1] == AdditionTask(seed=7).splits(10, 50)[1]  # held out whatever train_size
    assert first[1] != AdditionTask(seed=8).splits(2000, 50)[1]
    assert not {p.prompt for p in first[0]} & {p.prompt for p in first[1]}


def test_numbers_are_written_the_way_prose_writes_them():
    assert [number_words(n) for n in (0, 7, 13, 40, 47, 100, 108, 118)] == [
        "zero",
        "seven",
        "thirteen",
        "forty",
        "forty-seven",
        "one hundred",
        "one hundred eight",
        "one hundred eighteen",
    ]


def test_the_word_task_asks_and_answers_in_words_and_never_tests_on_training_problems():
    task = WordAdditionTask(seed=3)
    assert task.problem(47, 8) == Problem("Q: What is forty-seven plus eight?\nA:", " fifty-five")
    train, held_out = task.splits(3000, 100)
    assert len(held_out) == len(set(held_out)) == 100
    assert not set(held_out) & set(train)
    assert held_out == WordAdditionTask(seed=3).splits(10, 100)[1]


def test_short_operands_shape_only_the_training_split():
    every_short = AdditionTask(seed=5, short_operand_share=1.0)
    train, held_out = every_short.splits(500, 50)
    operands = [int(part) for p in train for part in p.prompt[:-1].split("+")]
    assert max(operands) < 100
    assert held_out == AdditionTask(seed=5).splits(500, 50)[1]
    assert AdditionTask(seed=5, short_operand_share=0.0).splits(500, 50) == AdditionTask(
        seed=5
    ).splits(500, 50)
