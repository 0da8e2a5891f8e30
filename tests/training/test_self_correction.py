"""Self-correction: the MSD-first task, carry-planted and mined errors, equal-forward comparisons."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backtrack.batch import BatchDecoder
from backtrack.params import GenerationParams
from backtrack.prompts import PromptEncoder
from backtrack.tiny import build_tiny_llama, tiny_llama_config
from training import compare, train
from training.carry import CarryPlanter
from training.collator import BacktrackCollator
from training.config import ConfigError, load_config
from training.data import encode
from training.errors import ErrorPlan, Injection, build_source
from training.objectives import layout
from training.on_policy import SelfCorrectionInjector, first_error, mine
from training.tasks import AdditionTask, Problem, load_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@given(st.integers(0, 99_999), st.integers(0, 99_999))
def test_addition_msd_writes_the_sum_most_significant_digit_first(a, b):
    problem = load_task("addition_msd", digits=5, seed=0).problem(a, b)
    assert problem.prompt == f"{a:05d}+{b:05d}="
    assert problem.response == f"{a + b:06d}"
    assert int(problem.response) == a + b


def test_addition_msd_splits_are_disjoint_seeded_and_differ_from_lsd_only_in_order():
    task = load_task("addition_msd", digits=6, seed=7, short_operand_share=0.5)
    train_set, held_out = task.splits(3000, 200)
    assert len(held_out) == 200
    assert not {p.prompt for p in train_set} & {p.prompt for p in held_out}
    assert task.splits(3000, 200) == (train_set, held_out)
    lsd_train, _ = load_task("addition", digits=6, seed=7, short_operand_share=0.5).splits(
        3000, 200
    )
    assert [p.prompt for p in lsd_train] == [p.prompt for p in train_set]
    assert [p.response[::-1] for p in lsd_train] == [p.response for p in train_set]


def test_an_unknown_task_fails_at_start_up_naming_the_field():
    with pytest.raises(ConfigError, match=r"data\.task"):
        load_config(None, ["data.task=subtraction"])
    assert load_config(None, ["data.task=addition_msd"]).data.task == "addition_msd"


@pytest.fixture(scope="module")
def planter(char_tokenizer) -> CarryPlanter:
    return CarryPlanter.for_tokenizer(char_tokenizer)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 9999), st.integers(0, 9999), st.booleans())
def test_carry_errors_are_the_digit_a_missed_carry_gives(
    char_tokenizer, a, b, most_significant_first
):
    planter = CarryPlanter.for_tokenizer(char_tokenizer, most_significant_first)
    task = AdditionTask(digits=4, most_significant_first=most_significant_first)
    example = encode(PromptEncoder(char_tokenizer), task.problem(a, b))
    answer = task.problem(a, b).response
    expected = []
    for index in range(len(answer)):
        column = index if most_significant_first else len(answer) - 1 - index
        place = 10 ** (len(answer) - 1 - column)
        if a % place + b % place >= place:  # the digits below carry into this one
            wrong = str((int(answer[index]) - 1) % 10)
            expected.append((index, char_tokenizer.convert_tokens_to_ids(wrong)))
    assert planter.candidates(example) == expected


def test_no_carry_error_is_planted_in_a_sum_without_carries(char_tokenizer, planter):
    example = encode(PromptEncoder(char_tokenizer), Problem("1234+4321=", "05555"))
    assert planter.plant(example, random.Random(0)) is None
    not_a_sum = encode(PromptEncoder(char_tokenizer), Problem("1234+4321=", "99999"))
    assert planter.candidates(not_a_sum) == []


def test_the_first_wrong_token_is_found_and_eos_errors_are_left_out():
    eos = frozenset({2})
    expected = (5, 6, 7, 2)
    assert first_error([5, 6, 7, 2], expected, eos) is None
    assert first_error([5, 9, 7, 2], expected, eos) == Injection(1, (9,))
    assert first_error([5, 6, 7, 8, 8], expected, eos) == Injection(3, (8,))  # too long
    assert first_error([5, 2], expected, eos) is None  # EOS too early: nothing can delete it


def biased(char_tokenizer, token: int, shift: float = 1e4):
    """A tiny model that writes `token` at every step (its logit moved far above the rest)."""
    model = build_tiny_llama(tiny_llama_config(len(char_tokenizer)))
    bias = torch.zeros(len(char_tokenizer))
    bias[token] = shift
    model.lm_head.register_forward_hook(lambda _module, _inputs, output: output + bias)
    return model


def test_mining_trains_the_models_own_first_wrong_token_then_bt(char_tokenizer, backtrack_id):
    prompts = PromptEncoder(char_tokenizer)
    problems = [Problem("3+4=", "07"), Problem("5+2=", "70"), Problem("1+6=", "77")]
    examples = [encode(prompts, problem) for problem in problems]
    seven = char_tokenizer.convert_tokens_to_ids("7")
    result = mine(biased(char_tokenizer, seven), char_tokenizer, backtrack_id, examples)
    assert result.problems == 3 and result.correct == 0
    assert result.mined == {
        examples[0]: Injection(0, (seven,)),  # `7` where `0` belongs
        examples[1]: Injection(1, (seven,)),
        examples[2]: Injection(2, (seven,)),  # a third `7` where the answer ends
    }
    example, injection = examples[0], result.mined[examples[0]]
    rewind = layout(example, injection, "rewind", backtrack_id)
    start = len(example.prompt_ids)
    assert rewind.input_ids == [*example.prompt_ids, seven, *example.response_ids]
    assert rewind.targets[start - 1] == example.response_ids[0]  # the right token, not the error
    assert rewind.targets[start] == backtrack_id  # the error predicts BT
    masked = layout(example, injection, "masked", backtrack_id)
    assert masked.input_ids == [*example.prompt_ids, seven, backtrack_id, *example.response_ids]


def test_a_wrong_answer_is_mined_unless_it_ends_too_early(char_tokenizer, backtrack_id):
    example = encode(PromptEncoder(char_tokenizer), Problem("3+4=", "7"))
    eos = char_tokenizer.convert_tokens_to_ids(char_tokenizer.eos_token)
    model = build_tiny_llama(tiny_llama_config(len(char_tokenizer)))
    bias = torch.zeros(len(char_tokenizer))
    model.lm_head.register_forward_hook(lambda _m, _i, output: output + bias)
    bias[char_tokenizer.convert_tokens_to_ids("7")] = 1e4  # the first step writes 7 ...
    result = mine(model, char_tokenizer, backtrack_id, [example])
    assert example in result.mined  # ... and a 7 for ever after: wrong at the end
    bias.zero_()
    bias[eos] = 1e4
    result = mine(model, char_tokenizer, backtrack_id, [example])
    assert result.mined == {} and result.unusable == 1  # EOS at once: nothing to delete


def test_the_injector_trains_mined_and_carry_errors(char_tokenizer, backtrack_id, planter):
    prompts = PromptEncoder(char_tokenizer)
    carried = encode(prompts, Problem("0019+0001=", "00020"))  # carries into the tens digit
    other = encode(prompts, Problem("0011+0001=", "00012"))
    source = build_source("in_distribution", [carried, other], len(char_tokenizer), [backtrack_id])
    mined = Injection(2, (char_tokenizer.convert_tokens_to_ids("5"),))
    injector = SelfCorrectionInjector(
        source, ErrorPlan(1, 1.0), mined=[(other, mined)], mined_share=1.0, carry=planter,
        carry_share=1.0,
    )  # fmt: skip
    assert all(injector.choose(carried) == (other, mined) for _ in range(20))
    injector.mined_share = 0.0
    one = char_tokenizer.convert_tokens_to_ids("1")
    assert all(injector.choose(carried) == (carried, Injection(3, (one,))) for _ in range(20))
    assert injector.take_counts() == {1: 40}


def test_mined_examples_make_up_their_share_of_the_batch(char_tokenizer, backtrack_id):
    prompts = PromptEncoder(char_tokenizer)
    clean = encode(prompts, Problem("0011+0001=", "00012"))
    wrong = encode(prompts, Problem("0019+0001=", "00020"))
    source = build_source("in_distribution", [clean], len(char_tokenizer), [backtrack_id])
    mined = [(wrong, Injection(3, (char_tokenizer.convert_tokens_to_ids("1"),)))]
    injector = SelfCorrectionInjector(source, ErrorPlan(), mined=mined, mined_share=0.25)
    collator = BacktrackCollator(backtrack_id, 0, "rewind", injector)
    batch = collator([clean] * 400)
    mined_rows = (batch["labels"] == backtrack_id).any(dim=1).sum().item()
    assert 60 <= mined_rows <= 140  # about a quarter, where no synthetic error is planned


def decisions_and_forwards(char_tokenizer, backtrack_id, model, policy):
    decoder = BatchDecoder(model, char_tokenizer, backtrack_id)
    prompt = char_tokenizer.encode("12+34=", add_special_tokens=False)
    rows = [
        decoder.add(prompt, GenerationParams(max_new_tokens=6, backtrack_policy=policy, seed=i))
        for i in range(3)
    ]
    while decoder.rows:
        decoder.step()
    return [(row.decisions, compare.forwards(row.done, policy != "never")) for row in rows]


@pytest.mark.parametrize("policy", ["argmax", "never"])
def test_an_answers_forwards_are_its_decisions(char_tokenizer, backtrack_id, tiny_model, policy):
    pairs = decisions_and_forwards(char_tokenizer, backtrack_id, tiny_model, policy)
    assert all(decisions == counted for decisions, counted in pairs)
    backtracking = biased(char_tokenizer, backtrack_id, shift=3.0)
    pairs = decisions_and_forwards(char_tokenizer, backtrack_id, backtracking, policy)
    assert all(decisions == counted for decisions, counted in pairs)


def test_a_majority_tie_goes_to_the_answer_drawn_first():
    assert compare.majority(["12", "13", "13"]) == "13"
    assert compare.majority(["12", "13", "14", "13", "12"]) == "12"


def test_a_tiny_run_mines_its_own_errors_and_plants_carries(tmp_path):
    output = tmp_path / "run"
    train.main(
        [
            "--config", str(CONFIGS / "addition_msd.yaml"),
            "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
            "data.digits=3", "data.train_size=64", "data.eval_size=8",
            "training.per_device_train_batch_size=8", "training.max_steps=4",
            "training.logging_steps=1", "training.eval_steps=0", "training.save_steps=100",
            "backtrack.phases=[{start_epoch: 0, max_errors: 1, error_share: 1.0}]",
            "backtrack.on_policy.steps=[0, 2]", "backtrack.on_policy.problems=16",
            f"training.output_dir={output}",
        ]
    )  # fmt: skip
    rounds = [r for r in json.loads((output / "curriculum.json").read_text()) if "mined" in r]
    assert [r["step"] for r in rounds] == [0, 2]
    assert all(r["mined_problems"] == 16 and 0 < r["mined"] <= 16 for r in rounds)


def test_chain_share_makes_columns_sum_to_nine_in_both_splits():
    train_set, held_out = load_task("addition_msd", 6, seed=3, chain_share=1.0).splits(50, 20)
    assert {p.response for p in held_out} == {"0999999"}  # every column 9: no carry at all
    assert {p.response for p in train_set} == {"0999999"}
    assert load_task("addition_msd", 6, seed=3).splits(50, 20)[1] != held_out
    half = load_task("addition_msd", 6, seed=3, chain_share=0.5).splits(0, 300)[1]
    nines = sum(
        int(a) + int(b) == 9
        for p in half
        for a, b in zip(p.prompt[:6], p.prompt[7:13], strict=True)
    )
    assert 0.45 < nines / (6 * 300) < 0.65  # half set to 9, a tenth of the rest by chance


def test_the_comparison_prices_every_row_in_forwards(char_tokenizer, backtrack_id, tiny_model):
    problems = load_task("addition_msd", 2, seed=0).splits(0, 6)[1]
    prompts = PromptEncoder(char_tokenizer)
    deleting = biased(char_tokenizer, backtrack_id, shift=3.0)
    backtracking = compare.Subject(deleting, char_tokenizer, backtrack_id, problems, prompts)
    plain = compare.Subject(tiny_model, char_tokenizer, backtrack_id, problems, prompts)
    figures = compare.compare(backtracking, plain, votes=(3,))
    assert "plain SFT, majority of 3 samples" in {row["name"] for row in figures["rows"]}
    rows = {row["name"]: row for row in figures["rows"]}
    with_bt = rows["BT model, greedy with BT (rewind)"]
    suppressed = rows["BT model, greedy, BT suppressed"]
    greedy = rows["plain SFT, greedy"]
    assert with_bt["backtracks_per_answer"] > 0 and suppressed["backtracks_per_answer"] == 0
    assert with_bt["forwards_per_answer"] > suppressed["forwards_per_answer"]
    n = figures["votes_matching_bt_forwards"]
    assert n * greedy["forwards_per_answer"] >= with_bt["forwards_per_answer"]
    vote = rows[f"plain SFT, majority of {n} samples"]
    assert vote["forwards_per_answer"] >= with_bt["forwards_per_answer"]


def test_own_errors_are_caught_only_by_a_model_that_deletes_them(char_tokenizer, backtrack_id):
    problems = [Problem("3+4=", "07"), Problem("5+2=", "70")]
    prompts = PromptEncoder(char_tokenizer)
    seven = char_tokenizer.convert_tokens_to_ids("7")
    writer = biased(char_tokenizer, seven)  # writes 7 for ever: wrong, never deletes
    subject = compare.Subject(writer, char_tokenizer, backtrack_id, problems, prompts)
    assert compare.own_errors_caught(subject) == (0, 2)
    model = build_tiny_llama(tiny_llama_config(len(char_tokenizer)))
    bias = torch.zeros(len(char_tokenizer))
    bias[seven], bias[backtrack_id] = 1e4, 2e4  # BT first, but BT is suppressed when mining
    model.lm_head.register_forward_hook(lambda _m, _i, output: output + bias)
    subject = compare.Subject(model, char_tokenizer, backtrack_id, problems, prompts)
    assert compare.own_errors_caught(subject) == (2, 2)
