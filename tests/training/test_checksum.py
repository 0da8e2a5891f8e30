"""`checksum`: the search task a model trained from scratch can learn, its splits, its wrong
branches and the config fields that tie wrong branches to a search task."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backtrack.prompts import PromptEncoder
from training.checksum import ChecksumTask, read_numbers, running_sums, wrong_answers
from training.config import ConfigError, load_config
from training.data import encode
from training.tasks import load_task
from training.wrong_branches import WrongBranchPlanter

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_a_checksum_answer_is_the_one_number_whose_digits_sum_to_the_target(branches, length, seed):
    task = ChecksumTask(branches, length, seed)
    problem = task.problem(*task.numbers(random.Random(seed)))
    numbers, target = read_numbers(problem.prompt)
    assert len(numbers) == branches and all(len(n) == length for n in numbers.values())
    matching = [label for label, n in numbers.items() if sum(map(int, n)) % 10 == int(target)]
    assert len(matching) == 1  # exactly one right answer, so exact match is the check
    label = matching[0]
    sums = problem.response[1:]
    assert problem.response[0] == label and len(sums) == length and sums[-1] == target
    assert all(
        int(sums[i]) == (int(sums[i - 1]) + int(numbers[label][i])) % 10 for i in range(1, length)
    )  # each step one addition of the sum so far and the next digit
    wrong = wrong_answers(problem.prompt, problem.response)
    assert sorted(a[0] for a in wrong) == sorted(set(numbers) - {label})
    for walk in wrong:  # another number's sums, the last one not the target
        assert walk == walk[0] + running_sums(numbers[walk[0]]) and walk[-1] != target
    assert wrong_answers("chat text " + problem.prompt + " more", problem.response) == wrong


def test_checksum_splits_are_disjoint_seeded_and_spread_the_answer_over_every_label():
    task = load_task("checksum", digits=3, seed=5, branches=3, branch_length=3)
    train_set, held_out = task.splits(2000, 300)
    assert len(held_out) == 300 and len(train_set) == 2000
    assert not {p.prompt for p in train_set} & {p.prompt for p in held_out}
    assert task.splits(2000, 300) == (train_set, held_out)
    assert {p.response[0] for p in train_set} == {"a", "b", "c"}


def test_text_of_another_task_has_no_wrong_branches():
    assert read_numbers("123+456=") is None
    assert wrong_answers("123+456=", "975") is None
    problem = ChecksumTask(3, 2, 0).problem(["12", "34", "50"], 0)
    assert wrong_answers(problem.prompt, "x99") is None  # not one of the numbers' answers


def test_search_fields_that_do_not_fit_the_task_fail_naming_the_field():
    with pytest.raises(ConfigError, match=r"backtrack\.wrong_branch_share"):
        load_config(None, ["data.task=addition", "backtrack.wrong_branch_share=0.5"])
    with pytest.raises(ConfigError, match=r"data\.branches"):
        load_config(None, ["data.task=checksum", "data.branches=27"])
    config = load_config(None, ["data.task=checksum", "data.branches=8", "data.branch_length=6"])
    assert (config.data.branches, config.data.branch_length) == (8, 6)  # no path_star limit


def test_a_wrong_branch_is_another_numbers_running_sums_planted_as_a_trace(char_tokenizer):
    task = ChecksumTask(4, 3, seed=1)
    problem = task.problem(*task.numbers(random.Random(1)))
    example = encode(PromptEncoder(char_tokenizer), problem)
    planter = WrongBranchPlanter(char_tokenizer, wrong_answers)
    planted = {planter.plant(example, random.Random(seed)) for seed in range(60)}
    walked = {char_tokenizer.decode(list(p.errors)) for p in planted}
    assert walked == set(wrong_answers(problem.prompt, problem.response))
    assert all(p.split == 0 and p.trace and len(p.errors) == 4 for p in planted)


def test_the_committed_search_config_trains_checksum_with_wrong_branches():
    from training import train
    from training.modeling import starting_point

    config = load_config(
        CONFIGS / "self_correction.yaml",
        ["data.train_size=64", "data.eval_size=4", "model.hidden_size=32", "model.num_layers=1"],
    )
    assert config.data.task == "checksum" and config.backtrack.wrong_branch_share > 0
    start = starting_point(config.model, config.backtrack.init_words, seed=0)
    trainer, _ = train.build_trainer(config, start)
    batches = list(itertools.islice(trainer.get_train_dataloader(), 4))
    bt = start.backtrack_id
    dead_ends = [int((row == bt).sum()) for batch in batches for row in batch["shift_labels"]]
    assert set(dead_ends) == {0, 1}  # a share of rows walks one wrong number to its dead end
    assert 0.3 < sum(dead_ends) / len(dead_ends) < 0.7


def test_compare_counts_an_answer_that_left_a_wrong_branch_as_repaired(char_tokenizer):
    """A search's mistake is deleted only after its branch is walked: the answer strayed, came
    back and ended right, and no right token was deleted on the way."""
    from backtrack.events import BacktrackEvent, TokenEvent
    from training import compare
    from training.evaluate import Subject

    ids = {c: char_tokenizer.convert_tokens_to_ids(c) for c in "abc0145"}
    walk = [TokenEvent(0, ids["a"], "a", 0.0), TokenEvent(1, ids["1"], "1", 0.0)]
    walk += [BacktrackEvent(1, ids["1"], "1", 1), BacktrackEvent(0, ids["a"], "a", 2)]
    walk += [TokenEvent(i, ids[c], c, 0.0) for i, c in enumerate("b054")]
    problem = ChecksumTask(3, 3, 0).problem(["111", "059", "222"], 1)
    assert problem.response == "b054"
    subject = Subject(None, char_tokenizer, 0, [problem], None)
    assert compare._deletions(walk, problem.response, subject) == (0, True)
    straight = [TokenEvent(i, ids[c], c, 0.0) for i, c in enumerate("b054")]
    assert compare._deletions(straight, problem.response, subject) == (0, False)
    right_deleted = [*straight[:2], BacktrackEvent(1, ids["0"], "0", 1), *straight[1:]]
    assert compare._deletions(right_deleted, problem.response, subject) == (1, False)
    answers = [compare.Answer("b054", 9, 2, 0, strayed=True)]
    assert compare.summarise("bt", answers, subject).repaired == 1.0
    answers = [compare.Answer("b054", 4, 0, 0, strayed=False)]
    assert compare.summarise("bt", answers, subject).repaired == 0.0


def test_an_unlearned_goal_is_never_a_target_of_a_right_answer_but_stays_in_the_wrong_walks(
    char_tokenizer, backtrack_id
):
    """`data.goal_unlearned`: a right answer's last sum is the target the prompt states, so
    learning it teaches copying; it loses its loss there, while a wrong walk's last sum (worked
    out, never the target) and the EOS after the right one keep theirs."""
    from training.collator import BacktrackCollator
    from training.errors import Injection
    from training.objectives import IGNORE, layout

    problem = ChecksumTask(3, 3, 0).problem(["111", "059", "222"], 1)  # target 4, answer b054
    example = encode(PromptEncoder(char_tokenizer), problem)
    *_, four, eos = example.response_ids
    walk = tuple(char_tokenizer.encode("a123", add_special_tokens=False))
    for injection in (None, Injection(0, walk, trace=True)):
        for objective in ("rewind", "masked"):
            full = layout(example, injection, objective, backtrack_id)
            collator = BacktrackCollator(backtrack_id, 0, objective, goal_unlearned=True)
            unlearned = collator._layout_of(example, injection)
            pairs = zip(full.targets, unlearned.targets, strict=True)
            changed = [i for i, (a, b) in enumerate(pairs) if a != b]
            assert [full.targets[i] for i in changed] == [four]  # only the right answer's goal
            assert [unlearned.targets[i] for i in changed] == [IGNORE]
            assert unlearned.targets[-2] == eos and unlearned.input_ids == full.input_ids
            if injection is not None:  # the wrong walk's last sum, 3, is still learned
                assert walk[-1] in unlearned.targets

    with pytest.raises(ConfigError, match=r"data\.goal_unlearned"):
        load_config(None, ["data.task=addition", "data.goal_unlearned=true"])
    assert load_config(CONFIGS / "self_correction.yaml", []).data.goal_unlearned

    from types import SimpleNamespace

    from training import train

    start = SimpleNamespace(backtrack_id=backtrack_id, tokenizer=char_tokenizer)
    for use_backtrack, unlearned in (("true", True), ("false", False)):
        config = load_config(
            CONFIGS / "self_correction.yaml", [f"backtrack.use_backtrack={use_backtrack}"]
        )  # plain SFT walks no wrong branch: its right answers are where it learns the goal
        assert train._collator(config, start, None).goal_unlearned is unlearned
