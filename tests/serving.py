"""Kept for test modules not yet moved over: the helper lives in the product, `server.process`."""

from server.process import (
    REPO_ROOT,
    ServerHandle,
    free_port,
    running_server,
    settings_env,
    wait_healthy,
)

__all__ = [
    "REPO_ROOT",
    "ServerHandle",
    "free_port",
    "running_server",
    "settings_env",
    "wait_healthy",
]
