"""The examples in module docstrings run and hold, so a reader can trust them."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["server.limits", "backtrack.validation", "clients.sse", "backtrack.generation_log"]
)
def test_the_examples_in_the_docstrings_hold(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
