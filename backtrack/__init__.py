"""The shared domain of backtrack-aware generation.

Owns the `<|BACKTRACK|>` token, checkpoint metadata, the request vocabulary (`backtrack.params`),
the wire protocol (`backtrack.events`) and the rewinding decoder that both the server and the
evaluation drive. Importing the package imports nothing heavy: `params` and `events` are
torch-free so `clients/` can share them; the token helpers load transformers on first use.
"""

from __future__ import annotations

from typing import Any

from backtrack.threads import bound_spin_waits

__all__ = ["BACKTRACK_TOKEN", "add_backtrack_token", "backtrack_token_id"]

bound_spin_waits()  # before torch loads OpenMP: idle threads do not spin for long


def __getattr__(name: str) -> Any:
    if name in __all__:
        from backtrack import tokens

        return getattr(tokens, name)
    raise AttributeError(f"module 'backtrack' has no attribute {name!r}")
