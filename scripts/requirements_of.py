"""Print the requirements of one optional-dependency group of pyproject.toml, one per line.

    pip install $(python3 scripts/requirements_of.py lint)

So `make lint` installs the pinned linters into a small environment of their own, without the
project (and without torch); the pins stay in one place, pyproject.toml's extras.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(extra: str) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return list(project["optional-dependencies"][extra])


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1])))
