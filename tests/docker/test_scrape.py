"""A real Prometheus scrapes the live server with docker/prometheus/prometheus.yml's job, and
evaluates every query of the Grafana dashboard: each must return series, so no panel is empty
because of a misspelt metric or label.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from server.process import ServerHandle, free_port
from tests.docker.promql import Query, dashboard_queries, label_names, load_dashboard
from tests.docker.tools import DASHBOARD, PROMETHEUS_CONFIG, prometheus_tool

SCRAPES_FOR_A_RATE = 2  # rate() needs two samples inside its window


def scrape_config_for(server: ServerHandle) -> dict:
    """The compose scrape job, pointed at the test server and scraping every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    del job["dns_sd_configs"]  # compose's service discovery; here there is one known address
    job["static_configs"] = [{"targets": [f"127.0.0.1:{server.port}"]}]
    config["global"]["scrape_interval"] = "1s"
    return config


def instant_query(url: str, promql: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10.0)
    body = response.json()
    assert body["status"] == "success", f"{promql}: {body}"
    return body["data"]["result"]


def wait_for_scrapes(url: str, job: str, process: subprocess.Popen, log: Path) -> None:
    """Until Prometheus has scraped the server often enough for rate(); its log if it never does."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            result = instant_query(url, f'count_over_time(up{{job="{job}"}}[1m])')
            if result and float(result[0]["value"][1]) >= SCRAPES_FOR_A_RATE:
                (up,) = instant_query(url, f'up{{job="{job}"}}')
                assert up["value"][1] == "1", "Prometheus cannot scrape the server"
                return
        except (httpx.HTTPError, ValueError):
            pass  # Prometheus still starting (no socket yet, or a plain-text 503 until ready)
        time.sleep(0.25)
    raise RuntimeError(
        f"Prometheus did not scrape {job} {SCRAPES_FOR_A_RATE} times:\n{log.read_text()}"
    )


@contextmanager
def running_prometheus(directory: Path, config: dict) -> Iterator[str]:
    """A real Prometheus on a free port with `config`, its first scrape of every job done."""
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                prometheus_tool("prometheus"),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for job in config["scrape_configs"]:
            wait_for_scrapes(url, job["job_name"], process, log_path)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("prometheus")
    with running_prometheus(directory, scrape_config_for(server)) as url:
        yield url


@pytest.mark.parametrize(
    "query", dashboard_queries(load_dashboard(DASHBOARD)), ids=lambda q: q.panel
)
def test_every_dashboard_query_returns_series(prometheus, query: Query):
    series = instant_query(prometheus, query.promql())
    assert series, f"{query.panel}: {query.expr} returns nothing"
    for grouping in label_names(query.expr) & {"finish_reason"}:
        assert all(grouping in item["metric"] for item in series), series


def test_the_replica_variable_lists_the_scraped_server(prometheus, server):
    (variable,) = load_dashboard(DASHBOARD)["templating"]["list"]
    metric = variable["definition"].removeprefix("label_values(").split(",")[0]
    response = httpx.get(
        f"{prometheus}/api/v1/label/instance/values", params={"match[]": metric}, timeout=10.0
    )
    assert response.json()["data"] == [f"127.0.0.1:{server.port}"]
