"""Run the real server process: a free port, `python -m server`, wait for /health, stop it.

Shared by the tests and the benchmarks (which import the product, never `tests/`).

    with running_server(tiny_checkpoint_dir, max_concurrent_requests=2) as server:
        httpx.post(f"{server.url}/generate", json={"inputs": "1+1="})

Keyword arguments are server settings (`server/settings.py`), passed as `BACKTRACK_<NAME>`
environment variables. At exit the process gets SIGTERM, then SIGKILL if it lingers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServerHandle:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path

    def logs(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_env(
    checkpoint_dir: str | os.PathLike, settings: dict[str, Any], extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["BACKTRACK_CHECKPOINT"] = str(checkpoint_dir)
    for name, value in settings.items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"BACKTRACK_{name.upper()}"] = text
    env.setdefault("BACKTRACK_LOG_LEVEL", "warning")
    env.setdefault("OMP_NUM_THREADS", "1")  # the suite shares two cores
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextmanager
def running_server(
    checkpoint_dir: str | os.PathLike,
    startup_timeout: float = 60.0,
    env: dict[str, str] | None = None,
    *,
    log_path: Path | None = None,
    stop_timeout: float = 20.0,
    module: str = "server",
    **settings: Any,
) -> Iterator[ServerHandle]:
    """A `python -m server` subprocess on a free port, healthy on entry, stopped on exit
    (`module`: another entry point that runs the server, such as a benchmark's wrapper).

    `env` adds other environment variables (e.g. OMP_NUM_THREADS) to the process. The log goes
    to a temporary file removed at exit, or to `log_path`, kept for reading afterwards (as the
    exit status stays on the handle); `stop_timeout` is how long SIGTERM gets before SIGKILL.
    """
    port = free_port()
    env = settings_env(checkpoint_dir, {"host": "127.0.0.1", "port": port, **settings}, env)
    keep_log = log_path is not None
    if log_path is None:
        with tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False) as log:
            log_path = Path(log.name)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    handle = ServerHandle(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        wait_healthy(handle, startup_timeout)
        yield handle
    finally:
        handle.terminate(stop_timeout)
        if not keep_log:
            log_path.unlink(missing_ok=True)


def wait_healthy(handle: ServerHandle, timeout: float) -> None:
    """Poll /health until 200; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(
                f"server exited with status {handle.process.returncode}:\n{handle.logs()}"
            )
        try:
            if httpx.get(f"{handle.url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server not healthy after {timeout} s:\n{handle.logs()}")
