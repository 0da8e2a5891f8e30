"""`path_star`: find the path from the centre of a star-shaped graph to a leaf, and the dead ends
that teach a model to search for it.

    prompt   "edges: k q, q a, a b, b w, k d, ... path from k to w:"   edges `u v` (u -> v), shuffled
    response " q a b w"                      the path's nodes after the start, the goal last

The graph is a centre with `branches` arms of `branch_length` nodes each, labelled with distinct
random letters; the goal is the leaf of one arm. Every step after the first is a lookup (the one
edge leaving the node just written); the first step needs the whole arm traced back from the goal,
which a model writing left to right cannot do in one forward pass. Trained on correct paths it
picks an arm about at random (Bachmann & Nagarajan, "The pitfalls of next-token prediction",
2024). A wrong arm, though, shows itself once walked: its leaf is not the goal. So a model that
walks an arm, deletes it at the dead end and takes another finds the path, and the decoder's ban
on an erased token makes those deletions a depth-first search (`training.wrong_branches` makes the
training examples for it).

Node labels are single letters, each written after a space: one token each in SmolLM2's
tokenizer (` a`), two in the character tokenizer. The train and held-out splits never share a
graph.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

from training.problem import Problem, disjoint_splits

LABELS = string.ascii_lowercase
EDGES, EDGE_SEPARATOR, QUERY = "edges:", ",", ". path from {start} to {goal}:"
QUERY_PATTERN = re.compile(r"(?P<edges>.*?)\. path from (?P<start>[a-z]) to (?P<goal>[a-z]):")


@dataclass(frozen=True)
class StarGraph:
    start: str
    arms: tuple[str, ...]
    """Each arm's nodes from the start outwards; every node one letter."""
    goal_arm: int

    @property
    def goal(self) -> str:
        return self.arms[self.goal_arm][-1]

    def edges(self) -> list[tuple[str, str]]:
        pairs = []
        for arm in self.arms:
            nodes = self.start + arm
            pairs += [(nodes[i], nodes[i + 1]) for i in range(len(arm))]
        return pairs


@dataclass(frozen=True)
class PathStarTask:
    branches: int = 4
    branch_length: int = 4
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.branches < 2 or self.branch_length < 1:
            raise ValueError("path_star needs at least 2 branches of at least 1 node")
        if 1 + self.branches * self.branch_length > len(LABELS):
            raise ValueError(
                f"path_star: 1 + branches x branch_length must be at most {len(LABELS)}"
            )

    def graph(self, rng: random.Random) -> tuple[StarGraph, list[tuple[str, str]]]:
        """A random graph and its edges in a random order."""
        labels = rng.sample(LABELS, 1 + self.branches * self.branch_length)
        start, rest = labels[0], labels[1:]
        length = self.branch_length
        arms = tuple("".join(rest[i * length : (i + 1) * length]) for i in range(self.branches))
        graph = StarGraph(start, arms, rng.randrange(self.branches))
        edges = graph.edges()
        rng.shuffle(edges)
        return graph, edges

    def problem(self, graph: StarGraph, edges: list[tuple[str, str]]) -> Problem:
        listed = EDGE_SEPARATOR.join(f" {u} {v}" for u, v in edges)
        prompt = EDGES + listed + QUERY.format(start=graph.start, goal=graph.goal)
        return Problem(prompt, spaced(graph.arms[graph.goal_arm]))

    def splits(self, train_size: int, eval_size: int) -> tuple[list[Problem], list[Problem]]:
        """Disjoint (train, eval) lists, the same for the same seed (`disjoint_splits`)."""
        return disjoint_splits(
            lambda rng: self.problem(*self.graph(rng)), self.seed, train_size, eval_size
        )


def spaced(nodes: str) -> str:
    """A path as the answer writes it: each node after a space."""
    return "".join(f" {node}" for node in nodes)


def read_graph(prompt: str) -> tuple[dict[str, list[str]], str, str] | None:
    """(successors of each node, start, goal) from a `path_star` prompt; None for another text.

    Read from the last `edges:` to the question's colon, so a chat template's text around the
    task's does no harm."""
    found = QUERY_PATTERN.match(prompt.rpartition(EDGES)[2])
    if found is None:
        return None
    successors: dict[str, list[str]] = {}
    for edge in found["edges"].split(EDGE_SEPARATOR):
        nodes = edge.split()
        if len(nodes) != 2:
            return None
        successors.setdefault(nodes[0], []).append(nodes[1])
    return successors, found["start"], found["goal"]


def arms_of(prompt: str) -> tuple[list[str], str] | None:
    """Every arm's nodes from the start outwards (as letters, unspaced), and the goal; None for
    another text."""
    read = read_graph(prompt)
    if read is None:
        return None
    successors, start, goal = read
    arms = []
    for first in successors.get(start, []):
        arm, node = "", first
        while node and node not in arm:
            arm += node
            nexts = successors.get(node, [])
            node = nexts[0] if len(nexts) == 1 else ""
        arms.append(arm)
    return arms, goal


def wrong_answers(prompt: str, answer: str) -> list[str] | None:
    """The other arms, written as an answer; None when `prompt` is not this task's or `answer`
    is not one of its arms."""
    found = arms_of(prompt)
    if found is None:
        return None
    arms = found[0]
    walked = "".join(answer.split())
    if walked not in arms:
        return None
    return [spaced(arm) for arm in arms if arm != walked]
