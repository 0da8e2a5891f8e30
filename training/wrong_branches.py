"""Wrong branches walked to their dead ends: the training examples of a search.

For `path_star` (`training.path_star`) the mistake a model makes is its first step, an arm chosen
about at random; it cannot see that the arm is wrong until it has walked it to a leaf that is not
the goal. So an error is planted as a whole wrong arm, a trace (`Injection.trace`): the objective
trains the walk along it as ordinary next tokens and BT only at its leaf, the one place where the
mistake can be seen. The deletions back to the start come from BT being the model's second choice
at every position (`backtrack.fallback_share`): with the token it would write banned after a
rewind, the model goes further back, until a position with another candidate (the start, with
the other arms), which makes its deletions a depth-first search over the arms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from training.data import Example
from training.errors import Injection
from training.problem import WrongAnswers


@dataclass(frozen=True)
class WrongBranchPlanter:
    """Plants one of the other branches, whole, before the right answer (module docstring):
    `wrong_answers` is the task's (`path_star.wrong_answers`, `checksum.wrong_answers`)."""

    tokenizer: PreTrainedTokenizerBase
    wrong_answers: WrongAnswers

    def plant(self, example: Example, rng: random.Random) -> Injection | None:
        wrong = self.wrong_answers(self._text(example.prompt_ids), self._text(example.response_ids))
        if not wrong:
            return None  # not this task's example
        ids = self.tokenizer.encode(rng.choice(wrong), add_special_tokens=False)
        return Injection(0, tuple(ids), trace=True)

    def _text(self, ids: tuple[int, ...]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one text out
        return text
