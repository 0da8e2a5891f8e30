"""Every checkpoint carries its own backtracking `generate` for plain transformers.

transformers 5 replaces `model.generate` with a checkpoint's `custom_generate/generate.py` when
the model is loaded with `trust_remote_code=True`. That file is `backtrack/standalone_generate.py`
copied byte for byte (it imports nothing of this project), so it is linted, type-checked and
tested where it lives, and a checkpoint copied to a machine with only torch and transformers
still backtracks.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CUSTOM_GENERATE_FILE = Path("custom_generate") / "generate.py"
REQUIREMENTS_FILE = Path("custom_generate") / "requirements.txt"
REQUIREMENTS = "torch>=2.4\ntransformers>=5.0\ntransformers<6\n"
"""What the file needs, checked by transformers when it loads it (the project's own ranges; one
bound a line, as transformers reads one comparison per line)."""


def standalone_source() -> bytes:
    """The text of the standalone generate, as shipped in the package."""
    return resources.files("backtrack").joinpath("standalone_generate.py").read_bytes()


def write_custom_generate(directory: str | Path) -> Path:
    """Write `custom_generate/generate.py` (and its requirements) into a checkpoint directory."""
    target = Path(directory) / CUSTOM_GENERATE_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(standalone_source())
    (Path(directory) / REQUIREMENTS_FILE).write_text(REQUIREMENTS)
    return target
