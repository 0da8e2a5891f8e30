"""Schemathesis against `/openapi.json`: positive and negative data on every operation, every
check (no 5xx, schema-valid bodies accepted, schema-violating ones refused, documented status
codes, content types, headers and bodies, `Allow` on 405). A bounded number of examples keeps it
near half a minute on two cores; `make test` runs it with the rest.

The server here has max_input_chars well below its token limit, so a prompt the schema allows
by characters is always within the token limit too (the char tokenizer: one token a character).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.process import running_server
from tests.server.conftest import API_KEY, MODEL_ID

MAX_EXAMPLES = 60


def test_schemathesis_finds_no_contract_failure(scripted_checkpoint_dir: Path, tmp_path: Path):
    cli = Path(sys.executable).with_name("schemathesis")
    if not cli.exists():
        pytest.skip("schemathesis is not installed: `make install` adds it (the dev extra)")
    with running_server(
        scripted_checkpoint_dir,
        api_key=API_KEY,
        model_id=MODEL_ID,
        max_new_tokens=16,
        max_input_tokens=4096,
        max_input_chars=2048,
    ) as handle:
        result = subprocess.run(
            [
                str(cli),
                "run",
                f"{handle.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {API_KEY}",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--generation-deterministic",
                "--no-color",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
