"""The live server the autoscaler checks read, started the way the container starts it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.process import ServerHandle
from tests.docker.tools import answering_entrypoint_server


@pytest.fixture(scope="package")
def server(tiny_checkpoint_dir, tmp_path_factory) -> Iterator[ServerHandle]:
    log_path = tmp_path_factory.mktemp("deploy-entrypoint") / "server.log"
    with answering_entrypoint_server(tiny_checkpoint_dir, log_path) as handle:
        yield handle
