"""What the layout promises, checked on the source: benchmarks import the product, never
`tests/`; the client side needs no torch; the engine reads what the decoder reports, not its
insides; no private transformers attribute and no deprecated `past_key_values=` keyword."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ["backtrack", "server", "training", "clients", "benchmarks"]


def sources(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_product_and_its_benchmarks_never_import_tests():
    offenders = {
        str(path.relative_to(ROOT)): sorted(name for name in imported_modules(path) if name.split(".")[0] == "tests")
        for path in sources(*PRODUCT)
    }  # fmt: skip
    assert {path: names for path, names in offenders.items() if names} == {}


def test_clients_and_the_shared_protocol_import_no_torch():
    code = (
        "import sys, clients, clients.viewer, backtrack.events, backtrack.params\n"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_engine_reads_only_the_decoders_public_face():
    tree = ast.parse((ROOT / "server" / "engine.py").read_text())
    reached = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "decoder"
        ):
            reached.add(node.attr)
    private = {name for name in reached if name.startswith("_")}
    assert private == set() and "kv" not in reached, reached


def test_no_private_transformers_attributes_and_no_deprecated_cache_keyword():
    for path in sources(*PRODUCT):
        text = path.read_text()
        assert "._attn_implementation" not in text, path
        assert "past_key_values=" not in text, path


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_fails_the_test_that_meets_it(category):
    """pyproject's filterwarnings: the day a dependency deprecates what we call, a test fails."""
    with pytest.raises(category):
        warnings.warn("this call goes away in the next major release", category, stacklevel=1)


SCHEDULER = frozenset({"server.engine", "server.jobs"})
"""The engine's own modules: the routes reach them through the service and the stream bridge."""


def test_the_routes_import_nothing_from_the_scheduler():
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & SCHEDULER)
        for path in sources("server/api")
    }
    assert {path: names for path, names in offenders.items() if names} == {}


LONGEST_MODULE = 400
LONGER_FOR_NOW = frozenset({"benchmarks/bench_concurrency.py"})
"""Modules still over the length a reader can hold; the set only shrinks."""


def test_no_product_module_is_longer_than_a_reader_can_hold():
    long = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in sources(*PRODUCT)
        if len(path.read_text().splitlines()) > LONGEST_MODULE
    }
    assert set(long) <= LONGER_FOR_NOW, long
