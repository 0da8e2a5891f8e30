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
from training.path_star import arms_of, spaced


@dataclass(frozen=True)
class WrongBranchPlanter:
    """Plants one of the other arms, whole, before the right path (module docstring)."""

    tokenizer: PreTrainedTokenizerBase

    def plant(self, example: Example, rng: random.Random) -> Injection | None:
        found = arms_of(self._text(example.prompt_ids))
        if found is None:
            return None
        arms, _ = found
        answer = "".join(self._text(example.response_ids).split())
        wrong = [arm for arm in arms if arm != answer]
        if len(wrong) == len(arms) or not wrong:
            return None  # the answer is not one of the arms: not this task's example
        ids = self.tokenizer.encode(spaced(rng.choice(wrong)), add_special_tokens=False)
        return Injection(0, tuple(ids), trace=True)

    def _text(self, ids: tuple[int, ...]) -> str:
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one text out
        return text
