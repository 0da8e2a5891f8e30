"""The shared domain of backtrack-aware generation.

Owns the `<|BACKTRACK|>` token, checkpoint metadata, the generation parameters and the
single-sequence rewinding decoder that both the server and the evaluation drive.
"""

from backtrack.tokens import BACKTRACK_TOKEN, add_backtrack_token, backtrack_token_id

__all__ = ["BACKTRACK_TOKEN", "add_backtrack_token", "backtrack_token_id"]
__version__ = "0.1.0"
