"""The container's command run directly on the host: it starts the real server from `BACKTRACK_*`
variables, and what Docker's health check and Grafana rely on holds against that live server
(the `server` fixture in conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.process import free_port
from tests.docker.promql import (
    TARGET_LABELS,
    dashboard_queries,
    label_names,
    load_dashboard,
    metric_names,
)
from tests.docker.tools import (
    DASHBOARD,
    ENTRYPOINT,
    HEALTHCHECK,
    REPO,
    entrypoint_server,
    exposition_problems,
    host_env,
    run_checker,
)


def run_healthcheck(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env=host_env(BACKTRACK_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_server_replaces_the_shell(server):
    """`exec`: the server itself gets `docker stop`'s SIGTERM, not a shell that ignores it."""
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes().split(b"\0")
    assert b"server" in cmdline and b"-m" in cmdline, cmdline


def test_the_healthcheck_passes_against_the_ready_server(server):
    result = run_healthcheck(server.port)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_healthcheck_fails_when_nothing_listens():
    result = run_healthcheck(free_port())
    assert result.returncode == 1
    assert "unhealthy" in result.stdout


class LoadingHandler(BaseHTTPRequestHandler):
    """Answers like the server while its model loads: 503 on /health."""

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Retry-After", "2")
        self.end_headers()

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


def test_the_healthcheck_fails_while_the_model_loads():
    with ThreadingHTTPServer(("127.0.0.1", 0), LoadingHandler) as loading:
        Thread(target=loading.serve_forever, daemon=True).start()
        try:
            result = run_healthcheck(loading.server_address[1])
        finally:
            loading.shutdown()
    assert result.returncode == 1, result.stdout


def exported_samples(exposition: str) -> dict[str, set[str]]:
    """Sample name (`..._total`, `..._bucket`, ...) -> the label names it carries."""
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def test_every_dashboard_query_uses_exported_metrics_and_labels(exposition):
    samples = exported_samples(exposition)
    for query in dashboard_queries(load_dashboard(DASHBOARD)):
        for name in metric_names(query.expr):
            assert name in samples, f"{query.panel}: the server exports no {name}"
            missing = label_names(query.expr) - TARGET_LABELS - samples[name]
            assert not missing, f"{query.panel}: {name} has no label {missing}"


def test_the_replica_variable_lists_an_exported_metric(exposition):
    (variable,) = load_dashboard(DASHBOARD)["templating"]["list"]
    metric = variable["definition"].removeprefix("label_values(").split(",")[0]
    assert metric in exported_samples(exposition)


def test_promtool_accepts_the_exposition(exposition):
    """The text Prometheus scrapes parses and follows the naming conventions promtool lints
    (all but the colon in vLLM's names, kept as vLLM spells them)."""
    assert exposition_problems(exposition) == []


def test_train_runs_make_train_in_the_installed_environment():
    """`docker run IMAGE train` is `make train` with the image's venv; CONFIG picks the config."""
    result = run_checker(
        [str(ENTRYPOINT), "train", "--dry-run"],
        env=host_env(CONFIG="configs/other.yaml"),
    )
    python = Path(sys.executable).parent.parent / "bin" / "python"
    assert f"{python} -m training.train --config configs/other.yaml" in result.stdout


def test_any_other_command_runs_as_given():
    result = run_checker(
        [str(ENTRYPOINT), "python", "-c", "import server; print('ok')"], env=host_env()
    )
    assert result.stdout.strip() == "ok"


def quick_training_config(output_dir: Path) -> dict:
    """configs/default.yaml shrunk to two optimiser steps of a one-layer model."""
    config = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    config["model"].update(hidden_size=32, num_layers=1, num_heads=2)
    config["data"].update(train_size=128, eval_size=8)
    config["training"].update(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        logging_steps=1,
        threads=1,
    )
    return config


def test_what_train_writes_is_what_serve_serves(tmp_path):
    """The compose flow: `train` writes a checkpoint into the shared volume, `serve` serves it."""
    checkpoint = tmp_path / "checkpoints" / "default"
    config_path = tmp_path / "quick.yaml"
    config_path.write_text(yaml.safe_dump(quick_training_config(checkpoint)))
    run_checker([str(ENTRYPOINT), "train"], env=host_env(CONFIG=str(config_path)))
    with entrypoint_server(checkpoint, tmp_path / "server.log") as server:
        info = httpx.get(f"{server.url}/info", timeout=10.0).json()
        assert info["model_id"] == checkpoint.name  # the id only: /info shows no host path
        answer = httpx.post(
            f"{server.url}/generate",
            json={"inputs": "123+456=", "parameters": {"max_new_tokens": 3}},
            timeout=30.0,
        )
        assert answer.status_code == 200, answer.text
