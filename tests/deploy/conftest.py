"""The live server the autoscaler checks read, started the way the container starts it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.docker.tools import entrypoint_server
from tests.serving import ServerHandle


@pytest.fixture(scope="package")
def server(tiny_checkpoint_dir, tmp_path_factory) -> Iterator[ServerHandle]:
    log_path = tmp_path_factory.mktemp("deploy-entrypoint") / "server.log"
    with entrypoint_server(tiny_checkpoint_dir, log_path) as handle:
        response = httpx.post(
            f"{handle.url}/generate",
            json={"inputs": "12+34=", "parameters": {"max_new_tokens": 4}},
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        yield handle
