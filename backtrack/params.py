"""Generation parameters of one request, validated once where they enter.

Names follow TGI (`max_new_tokens`, `temperature`, `top_k`, `top_p`, ...) plus the backtrack
ones. Invalid values raise `ValueError` whose message starts with the field name, so the HTTP
layer can answer 422 naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["rewind", "keep"]
BacktrackPolicy = Literal["argmax", "threshold", "sample", "never"]
MODES = ("rewind", "keep")
POLICIES = ("argmax", "threshold", "sample", "never")
MIN_TEMPERATURE = 1e-2
"""Below it logits / temperature overflow to inf and sampling fails (vLLM clamps here too)."""
MAX_SEED = 2**64 - 1
"""torch.Generator.manual_seed takes 64-bit seeds."""
PENALTY_RANGE = (1e-2, 100.0)
"""A repetition penalty outside it overflows the scores of repeated tokens."""


@dataclass
class GenerationParams:
    max_new_tokens: int = 64
    """Upper bound on the visible output length; deleted tokens do not count against it."""
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    """Stop sequences, matched on the visible text after deletions and never part of the output."""
    max_backtracks: int = 16
    """Backtracks allowed per request; a BT beyond it ends generation (`max_backtracks`)."""
    max_backtrack_depth: int = 8
    """How far behind the furthest position ever reached a deletion may go."""
    mode: Mode = "rewind"
    """`rewind` drops the token from the KV cache; `keep` leaves BT and it in the context."""
    backtrack_policy: BacktrackPolicy = "argmax"
    """How BT is decided: argmax / threshold of the untempered distribution, sampled, or never."""
    backtrack_threshold: float = 0.3
    ignore_eos: bool = False
    """Never end on EOS (EOS is not drawn): load tests ask for exactly max_new_tokens."""
    min_tokens: int = 0
    """EOS is not drawn before the visible output has this many tokens."""

    def __post_init__(self) -> None:
        _check(self.max_new_tokens >= 1, "max_new_tokens", "must be at least 1")
        _check(
            MIN_TEMPERATURE <= self.temperature < math.inf,
            "temperature",
            f"must be at least {MIN_TEMPERATURE} (use do_sample false for greedy)",
        )
        _check(
            self.seed is None or 0 <= self.seed <= MAX_SEED,
            "seed",
            f"must be in [0, {MAX_SEED}] (2**64 - 1)",
        )
        _check(self.top_k is None or self.top_k >= 1, "top_k", "must be at least 1")
        _check(self.top_p is None or 0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self.min_p is None or 0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        _check(
            self.repetition_penalty is None
            or PENALTY_RANGE[0] <= self.repetition_penalty <= PENALTY_RANGE[1],
            "repetition_penalty",
            f"must be in [{PENALTY_RANGE[0]}, {PENALTY_RANGE[1]}]",
        )
        _check(self.min_tokens >= 0, "min_tokens", "must be at least 0")
        _check(self.max_backtracks >= 0, "max_backtracks", "must be at least 0")
        _check(self.max_backtrack_depth >= 1, "max_backtrack_depth", "must be at least 1")
        _check(self.mode in MODES, "mode", f"must be one of {', '.join(MODES)}")
        _check(
            self.backtrack_policy in POLICIES,
            "backtrack_policy",
            f"must be one of {', '.join(POLICIES)}",
        )
        _check(0 < self.backtrack_threshold < 1, "backtrack_threshold", "must be in (0, 1)")
        _check(all(self.stop), "stop", "stop sequences must not be empty strings")


class InvalidParameter(ValueError):
    """A parameter out of range; `field` names it for the 422 answer."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name} {message}")
        self.field = field_name


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise InvalidParameter(name, message)
