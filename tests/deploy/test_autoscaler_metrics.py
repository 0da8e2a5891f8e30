"""Every metric the autoscaler and the router read is one the server exports, as a gauge.

The names come from the manifests (the HPA, prometheus-adapter's rules, the endpoint picker's
flags) and are looked up in the real `/metrics` exposition of a server started through the
container's entrypoint. Where Prometheus is installed (`make docker-lint` or `make deploy-lint`
install it), each adapter query runs, templated as prometheus-adapter templates it, against a
Prometheus that scraped that server with the `namespace` and `pod` labels Kubernetes adds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.process import ServerHandle
from tests.deploy.tools import ADAPTER_VALUES, OVERLAYS, container, rendered, the
from tests.docker.test_scrape import instant_query, running_prometheus

EPP_METRIC_FLAGS = ("total-queued-requests-metric", "kv-cache-usage-percentage-metric")
"""The picker's (v1.0.0) metric flags; `lora-info-metric` is set empty, which switches it off."""
NAMESPACE, POD = "backtrack", "backtrack-serving-0"


@pytest.fixture(scope="module")
def exported(server: ServerHandle) -> dict[str, str]:
    """Metric family name -> type, parsed from the live exposition."""
    text = httpx.get(f"{server.url}/metrics", timeout=10.0).text
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def series_name(rule: dict) -> str:
    return re.match(r"\w+", rule["seriesQuery"]).group(0)


def hpa_metrics() -> set[str]:
    names = set()
    for overlay in OVERLAYS:
        hpa = the(rendered(overlay), "HorizontalPodAutoscaler")
        names |= {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    return names


def picker_metrics() -> dict[str, str]:
    epp = container(the(rendered("router"), "Deployment", "backtrack-serving-epp"), "epp")
    args = dict(a.removeprefix("--").partition("=")[::2] for a in epp["args"])
    return {flag: args[flag] for flag in EPP_METRIC_FLAGS}


def test_every_metric_the_hpa_reads_is_an_exported_gauge(exported):
    by_name = {rule["name"]["as"]: series_name(rule) for rule in adapter_rules()}
    for metric in hpa_metrics():
        series = by_name[metric]
        assert exported.get(series) == "gauge", f"{metric}: {series} is {exported.get(series)}"


def test_every_metric_the_endpoint_picker_reads_is_an_exported_gauge(exported):
    for flag, metric in picker_metrics().items():
        assert exported.get(metric) == "gauge", f"--{flag}={metric}: {exported.get(metric)}"


EPP_DEFAULT_METRICS = (
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "vllm:lora_requests_info",
)
"""What the picker reads when its metric flags are left out: vLLM's names (the KV one renamed
from `gpu_cache_usage_perc` across its releases)."""


def test_a_picker_on_its_default_flags_finds_its_gauges_too(exported):
    for metric in EPP_DEFAULT_METRICS:
        assert exported.get(metric) == "gauge", f"{metric}: {exported.get(metric)}"


def test_the_router_gauges_are_bounded_as_the_picker_expects(server):
    """KV use is a fraction 0..1 (the picker's contract), the queue a count; idle: both 0."""
    text = httpx.get(f"{server.url}/metrics", timeout=10.0).text
    values = {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
    }
    assert 0.0 <= values["backtrack_kv_cache_usage_ratio"] <= 1.0
    assert values["backtrack_queue_size"] == 0.0


def adapter_promql(rule: dict) -> str:
    """The query prometheus-adapter sends for one pod, its Go template filled in."""
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series_name(rule))
        .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"{POD}"')
        .replace("<<.GroupBy>>", "pod")
    )


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("prometheus-adapter")
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "backtrack-serving",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{server.port}"],
                        "labels": {"namespace": NAMESPACE, "pod": POD},
                    }
                ],
            }
        ],
    }
    with running_prometheus(directory, config) as url:
        yield url


@pytest.mark.parametrize("rule", adapter_rules(), ids=lambda rule: rule["name"]["as"])
def test_each_adapter_query_returns_one_series_per_pod(prometheus, rule):
    series_query = rule["seriesQuery"].replace("\n", " ")
    assert instant_query(prometheus, series_query), series_query
    (series,) = instant_query(prometheus, adapter_promql(rule))
    assert series["metric"] == {"pod": POD}
    assert 0.0 <= float(series["value"][1]) <= 1.0 or rule["name"]["as"] == "backtrack_queue_size"
