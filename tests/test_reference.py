"""What is generated from the code (`scripts/gen_reference.py`) matches the code: the client's
`Parameters` and the docs' parameter and settings tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location(
        "gen_reference", ROOT / "scripts" / "gen_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_reference", module)
    spec.loader.exec_module(module)
    return module


def test_every_generated_file_is_what_the_code_says_now():
    generator = _generator()
    stale = [
        str(path.relative_to(ROOT))
        for path, text in generator.expected_files().items()
        if not path.exists() or path.read_text() != text
    ]
    assert stale == [], f"run `python scripts/gen_reference.py`: {stale}"


def test_the_client_takes_exactly_the_vocabulary_and_the_request_options():
    from backtrack.params import GenerationParams
    from clients.client import PARAMETER_NAMES

    expected = set(GenerationParams.model_fields) | {"details", "hold_back_deletable"}
    assert expected == PARAMETER_NAMES


def test_a_changed_parameter_makes_the_tables_stale(monkeypatch):
    generator = _generator()
    page = "<!-- generated: parameters -->\nold\n<!-- end generated -->\n"
    assert "`max_new_tokens`" in generator.with_tables(page)
    monkeypatch.setitem(generator.TABLES, "parameters", lambda: "new\n")
    assert (
        generator.with_tables(page)
        == "<!-- generated: parameters -->\nnew\n<!-- end generated -->\n"
    )
