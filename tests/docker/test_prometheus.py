"""docker/prometheus/prometheus.yml: valid for promtool, and scraping every server replica."""

from __future__ import annotations

import yaml

from tests.docker.tools import COMPOSE, PROMETHEUS_CONFIG, compose_config, promtool, run_checker


def test_promtool_accepts_the_config():
    run_checker([promtool(), "check", "config", str(PROMETHEUS_CONFIG)])


def test_scrapes_metrics_of_every_server_replica():
    """DNS discovery on the compose service name returns one address per replica."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    services = compose_config(COMPOSE)["services"]
    server_port = int(services["server"]["environment"]["BACKTRACK_PORT"])
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["server"] and "server" in services
    assert discovery["type"] == "A"
    assert discovery["port"] == server_port
