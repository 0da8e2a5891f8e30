"""The README is a door and `docs/` the manual: the door is short, every page is reachable from
it, every page opens with how to run what it describes, and no link points nowhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target).resolve() for target in LINK.findall(README.read_text())}
    assert PAGES and [page for page in PAGES if page.resolve() not in linked] == []


def test_every_page_opens_with_the_commands_that_run_what_it_describes():
    for page in PAGES:
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# "), page.name
        assert lines[2] == "```bash", f"{page.name} does not open with a command block"


def test_every_relative_link_resolves():
    for document in [README, *PAGES]:
        for target in LINK.findall(document.read_text()):
            if "://" not in target:
                assert (document.parent / target).exists(), f"{document.name}: {target}"
