"""The checks agree with each other: pre-commit runs the linters at the pins `make lint` installs,
and the type checker covers every product package."""

from __future__ import annotations

from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_pre_commit_pins_the_linters_as_the_lint_extra_does():
    lint = set(PYPROJECT["project"]["optional-dependencies"]["lint"])
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    pinned = {pin for hook in hooks for pin in hook.get("additional_dependencies", [])}
    assert pinned == lint


def test_the_type_checker_covers_every_product_package():
    from tests.test_boundaries import PRODUCT

    assert sorted(PYPROJECT["tool"]["mypy"]["files"]) == sorted(PRODUCT)


def test_ci_lints_and_type_checks_before_the_tests():
    steps = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("make ")
    ]
    assert steps[:3] == ["make lint", "make typecheck", "make test"]
