"""The live server the deployment checks run against, started the way the container starts it.

One server (the tiny checkpoint) is started through docker/entrypoint.sh for the whole package;
one generation request makes the labelled series (requests by finish reason) appear in /metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from server.process import ServerHandle
from tests.docker.tools import answering_entrypoint_server


@pytest.fixture(scope="package")
def server(tiny_checkpoint_dir, tmp_path_factory) -> Iterator[ServerHandle]:
    log_path = tmp_path_factory.mktemp("entrypoint") / "server.log"
    with answering_entrypoint_server(tiny_checkpoint_dir, log_path) as handle:
        yield handle


@pytest.fixture(scope="package")
def exposition(server) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=10.0)
    assert response.status_code == 200
    return response.text
