"""The live server the deployment checks run against, started the way the container starts it.

One server (the tiny checkpoint) is started through docker/entrypoint.sh for the whole package;
one generation request makes the labelled series (requests by finish reason) appear in /metrics.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.docker.tools import ENTRYPOINT, REPO, host_env
from tests.serving import ServerHandle, free_port, settings_env, wait_healthy


@pytest.fixture(scope="package")
def server(tiny_checkpoint_dir, tmp_path_factory) -> Iterator[ServerHandle]:
    port = free_port()
    settings = settings_env(tiny_checkpoint_dir, {"host": "127.0.0.1", "port": port})
    log_path = tmp_path_factory.mktemp("entrypoint") / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(ENTRYPOINT)],  # run as Docker runs it: executable, no argument (CMD `serve`)
            cwd=REPO,
            env=host_env(**settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    handle = ServerHandle(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        wait_healthy(handle, timeout=60.0)
        response = httpx.post(
            f"{handle.url}/generate",
            json={"inputs": "12+34=", "parameters": {"max_new_tokens": 4}},
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        yield handle
    finally:
        handle.terminate()


@pytest.fixture(scope="package")
def exposition(server) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=10.0)
    assert response.status_code == 200
    return response.text
