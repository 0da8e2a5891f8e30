"""Search at greedy decoding: the `path_star` task, wrong branches walked to their dead ends, and
the loss that makes BT every position's second choice."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backtrack.prompts import PromptEncoder
from training.config import ConfigError, load_config
from training.data import Example, encode
from training.errors import ErrorPlan, Injection, build_source
from training.fallback import fallback_loss
from training.objectives import IGNORE, layout
from training.on_policy import SelfCorrectionInjector
from training.path_star import LABELS, PathStarTask, arms_of, read_graph, wrong_answers
from training.tasks import load_task
from training.wrong_branches import WrongBranchPlanter

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 5), st.integers(1, 5), st.integers(0, 10_000))
def test_a_path_star_answer_is_the_arm_that_ends_at_the_goal(branches, length, seed):
    task = PathStarTask(branches, length, seed)
    graph, edges = task.graph(random.Random(seed))
    problem = task.problem(graph, edges)
    successors, start, goal = read_graph(problem.prompt)
    assert (start, goal) == (graph.start, graph.goal)
    assert sorted(successors[start]) == sorted(arm[0] for arm in graph.arms)
    answer = problem.response.split()
    assert problem.response == "".join(f" {node}" for node in answer)
    walked, node = "", answer[0]
    while node:
        walked += node
        node = successors.get(node, [""])[0]
    assert walked == "".join(answer) and answer[-1] == goal
    assert len(answer) == length
    nodes = start + "".join(graph.arms)
    assert len(set(nodes)) == len(nodes) and set(nodes) <= set(LABELS)
    arms, read_goal = arms_of(problem.prompt)
    assert sorted(arms) == sorted(graph.arms) and read_goal == goal


def test_path_star_splits_are_disjoint_and_seeded():
    task = load_task("path_star", digits=3, seed=5, branches=3, branch_length=3)
    train_set, held_out = task.splits(2000, 100)
    assert len(held_out) == 100 and len(train_set) == 2000
    assert not {p.prompt for p in train_set} & {p.prompt for p in held_out}
    assert task.splits(2000, 100) == (train_set, held_out)
    goal_arms = [arms_of(p.prompt)[0].index("".join(p.response.split())) for p in train_set]
    assert set(goal_arms) == {0, 1, 2}  # the goal's arm is not given away by the edges' order


def test_path_star_sizes_that_do_not_fit_one_letter_per_node_fail_naming_the_field():
    with pytest.raises(ConfigError, match=r"data\.branches"):
        load_config(None, ["data.task=path_star", "data.branches=6", "data.branch_length=5"])
    with pytest.raises(ConfigError, match=r"data\.branch_length"):
        load_config(None, ["data.task=path_star", "data.branch_length=0"])
    with pytest.raises(ConfigError, match=r"backtrack\.fallback_share"):
        load_config(None, ["backtrack.fallback_share=0.5"])
    with pytest.raises(ConfigError, match=r"backtrack\.wrong_branch_share"):
        load_config(None, ["backtrack.wrong_branch_share=1.5"])


@pytest.fixture(scope="module")
def star_example(char_tokenizer) -> tuple[Example, list[str]]:
    task = PathStarTask(4, 3, seed=3)
    problem = task.problem(*task.graph(random.Random(3)))
    arms, _ = arms_of(problem.prompt)
    return encode(PromptEncoder(char_tokenizer), problem), arms


def test_a_wrong_branch_is_a_whole_other_arm_planted_as_a_trace(char_tokenizer, star_example):
    example, arms = star_example
    planter = WrongBranchPlanter(char_tokenizer, wrong_answers)
    answer = "".join(char_tokenizer.decode(example.response_ids, skip_special_tokens=True).split())
    planted = {planter.plant(example, random.Random(seed)) for seed in range(40)}
    walked = {"".join(char_tokenizer.decode(list(p.errors)).split()) for p in planted}
    assert walked == set(arms) - {answer}
    assert all(p.split == 0 and p.trace for p in planted)
    addition = encode(PromptEncoder(char_tokenizer), load_task("addition", 3, 0).problem(1, 2))
    assert planter.plant(addition, random.Random(0)) is None


def test_a_trace_is_walked_as_next_tokens_and_deleted_only_at_its_dead_end(
    char_tokenizer, backtrack_id, star_example
):
    """Rewind: `prompt e1..ek rest`, the walk's later nodes the targets of the ones before,
    BT only after the leaf, and `rest` computed as if the walk had never been."""
    example, _ = star_example
    wrong = Injection(0, tuple(char_tokenizer.encode("xyz", add_special_tokens=False)), trace=True)
    prompt, response = list(example.prompt_ids), list(example.response_ids)
    start = len(prompt)
    result = layout(example, wrong, "rewind", backtrack_id)
    x, y, z = wrong.errors
    assert result.input_ids == [*prompt, x, y, z, *response]
    assert result.targets[start - 1] == response[0]  # never taught to take the wrong arm
    assert result.targets[start : start + 3] == [y, z, backtrack_id]
    assert result.targets[start + 3 :] == [*response[1:], IGNORE]
    assert result.position_ids[start + 3 :] == list(range(start, start + len(response)))
    assert result.hidden == (start, start + 3)
    seen_at_once = layout(example, Injection(0, wrong.errors), "rewind", backtrack_id)
    assert seen_at_once.targets[start : start + 3] == [backtrack_id] * 3
    masked = layout(example, wrong, "masked", backtrack_id)
    assert masked.input_ids == prompt + [x, y, z] + [backtrack_id] * 3 + response
    assert masked.targets[start - 1] == IGNORE
    assert masked.targets[start : start + 6] == [y, z, backtrack_id, backtrack_id, backtrack_id,
                                                 response[0]]  # fmt: skip


def test_the_injector_walks_wrong_branches_in_its_share_of_slots(char_tokenizer, star_example):
    example, _ = star_example
    source = build_source("in_distribution", [example], len(char_tokenizer), [0, 1, 2])
    injector = SelfCorrectionInjector(
        source,
        ErrorPlan(),
        seed=0,
        branches=WrongBranchPlanter(char_tokenizer, wrong_answers),
        branch_share=0.5,
    )
    chosen = [injector.choose(example)[1] for _ in range(400)]
    traces = [c for c in chosen if c is not None and c.trace]
    assert 150 < len(traces) < 250
    assert all(c is None for c in chosen if c not in traces)  # the curriculum is still clean
    assert injector.take_counts()[0] == 400 - len(traces)


def test_the_fallback_loss_is_cross_entropy_with_a_share_of_each_target_on_bt():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[IGNORE, 3, 6, 1, IGNORE], [2, 6, 0, IGNORE, IGNORE]])
    bt, share = 6, 0.1
    log_probs = torch.log_softmax(logits, dim=-1)
    expected, count = 0.0, 0
    for b in range(2):
        for i in range(5):
            t = int(targets[b, i])
            if t == IGNORE:
                continue
            count += 1
            if t == bt:
                expected -= float(log_probs[b, i, bt])
            else:
                expected -= (1 - share) * float(log_probs[b, i, t]) + share * float(
                    log_probs[b, i, bt]
                )
    assert float(fallback_loss(logits, targets, bt, share)) == pytest.approx(expected / count)
    assert float(fallback_loss(logits, targets, bt, share, num_items=10)) == pytest.approx(
        expected / 10
    )
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    assert float(fallback_loss(logits, targets, bt, 0.0)) == pytest.approx(float(plain))


def test_the_fallback_loss_makes_bt_the_second_choice_and_keeps_the_first():
    """Fitting free logits to one target: BT ends second with about the share's probability,
    the target stays first, and every other token falls below BT."""
    logits = torch.zeros(1, 1, 10, requires_grad=True)
    targets = torch.tensor([[4]])
    optimiser = torch.optim.Adam([logits], lr=0.1)
    for _ in range(500):
        optimiser.zero_grad()
        fallback_loss(logits, targets, backtrack_id=9, share=0.1).backward()
        optimiser.step()
    probs = torch.softmax(logits.detach()[0, 0], dim=-1)
    order = probs.argsort(descending=True).tolist()
    assert order[:2] == [4, 9]
    assert float(probs[9]) == pytest.approx(0.1, abs=0.02)


SEARCH_RUN = [
    "model.name_or_path=tiny", "model.gguf_file=null", "model.hidden_size=32",
    "model.num_layers=1", "model.num_heads=2", "data.branches=3", "data.branch_length=2",
    "data.train_size=32", "data.eval_size=4", "data.max_length=64",
    "training.per_device_train_batch_size=8", "training.logging_steps=1", "training.save_steps=100",
    "backtrack.wrong_branch_share=1.0", "backtrack.fallback_share=0.1",
]  # fmt: skip


def search_trainer(*overrides: str):
    from training import train
    from training.modeling import starting_point

    config = load_config(CONFIGS / "smollm2_path_star.yaml", [*SEARCH_RUN, *overrides])
    start = starting_point(config.model, config.backtrack.init_words, seed=0)
    trainer, _ = train.build_trainer(config, start)
    return trainer, start


def test_the_trainer_walks_wrong_branches_and_scores_bt_as_the_second_choice():
    trainer, start = search_trainer()
    batch = next(iter(trainer.get_train_dataloader()))
    bt = start.backtrack_id
    assert all((row == bt).sum() == 1 for row in batch["shift_labels"])  # one dead end each
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        logits = trainer.model(
            **{k: v for k, v in batch.items() if k not in ("labels", "shift_labels")}
        ).logits
    assert float(loss) == pytest.approx(
        float(fallback_loss(logits, batch["shift_labels"], bt, 0.1))
    )
    one_hot = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["shift_labels"].reshape(-1)
    )
    assert float(loss) != pytest.approx(float(one_hot))


def test_the_plain_baseline_neither_walks_wrong_branches_nor_learns_bt():
    trainer, start = search_trainer("backtrack.use_backtrack=false")
    assert trainer.fallback_share == 0.0
    assert not any(
        (b["shift_labels"] == start.backtrack_id).any() for b in trainer.get_train_dataloader()
    )
