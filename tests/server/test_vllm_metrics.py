"""vLLM's metric names on a real server: the names, types and labels vLLM documents, and values
that move with the requests exactly as the server's own names do."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.sse import iter_events
from server.process import ServerHandle, running_server
from tests.docker.tools import exposition_problems
from tests.server.conftest import LOOP_PROMPT, PROMPT
from tests.server.metrics_text import scrape, value
from tests.server.sse import stream_events

VLLM_METRICS_DOC = "https://docs.vllm.ai/en/stable/usage/metrics/"
"""Names and types: the page above and docs/design/metrics.md in vllm-project/vllm. Labels and
bucket edges: `PrometheusStatLogger` in vllm/v1/metrics/loggers.py (`model_name`, `engine`)."""
PER_ENGINE = {"model_name", "engine"}
VLLM_CONTRACT = {
    "vllm:num_requests_running": ("gauge", PER_ENGINE),
    "vllm:num_requests_waiting": ("gauge", PER_ENGINE),
    "vllm:kv_cache_usage_perc": ("gauge", PER_ENGINE),
    "vllm:gpu_cache_usage_perc": ("gauge", PER_ENGINE),  # before vLLM 0.10
    "vllm:prompt_tokens": ("counter", PER_ENGINE),
    "vllm:generation_tokens": ("counter", PER_ENGINE),
    "vllm:request_success": ("counter", PER_ENGINE | {"finished_reason"}),
    "vllm:time_to_first_token_seconds": ("histogram", PER_ENGINE),
    "vllm:inter_token_latency_seconds": ("histogram", PER_ENGINE),
    "vllm:time_per_output_token_seconds": ("histogram", PER_ENGINE),  # before vLLM 0.11
    "vllm:e2e_request_latency_seconds": ("histogram", PER_ENGINE),
    "vllm:lora_requests_info": (
        "gauge",
        {"max_lora", "running_lora_adapters", "waiting_lora_adapters"},
    ),
}
FINISHED_REASONS = {"stop", "length", "abort", "error", "repetition"}
"""vLLM's FINISH_REASON_STRINGS (vllm/v1/engine/__init__.py)."""
VLLM_BUCKETS = {
    "vllm:time_to_first_token_seconds": [
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
    ],
    "vllm:inter_token_latency_seconds": [
        0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        20.0, 40.0, 80.0,
    ],
    "vllm:e2e_request_latency_seconds": [
        0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
        240.0, 480.0, 960.0, 1920.0, 7680.0,
    ],
}  # fmt: skip
VLLM_BUCKETS["vllm:time_per_output_token_seconds"] = VLLM_BUCKETS[
    "vllm:inter_token_latency_seconds"
]
MODEL_NAME = "scripted-vllm-names"
LABELS = {"model_name": MODEL_NAME, "engine": "0"}
LONG = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 4000}, "stream": True}


@pytest.fixture(scope="module")
def one_slot(scripted_checkpoint_dir) -> Iterator[ServerHandle]:
    """One decoding slot and a short queue, so a second request waits while the first runs."""
    with running_server(
        scripted_checkpoint_dir,
        model_id=MODEL_NAME,
        max_concurrent_requests=1,
        max_queue_size=2,
        max_new_tokens=4000,
    ) as handle:
        yield handle


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def vllm(samples: dict, name: str, **labels: str) -> float:
    return value(samples, name, **LABELS, **labels)


def idle(url: str) -> bool:
    """Nothing running or waiting and no KV held, under vLLM's names."""
    samples = scrape(url)
    names = (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
    )
    return all(vllm(samples, name) == 0 for name in names)


def test_every_vllm_name_has_vllms_type_and_labels(one_slot):
    httpx.post(f"{one_slot.url}/generate", json={"inputs": PROMPT}, timeout=30)
    text = httpx.get(f"{one_slot.url}/metrics", timeout=10).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, (kind, label_names) in VLLM_CONTRACT.items():
        assert name in families, f"{name} is missing ({VLLM_METRICS_DOC})"
        family = families[name]
        assert family.type == kind, name
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        assert samples, name
        for sample in samples:
            assert set(sample.labels) - {"le"} == label_names, sample
            if "model_name" in label_names:
                assert {k: sample.labels[k] for k in LABELS} == LABELS, sample
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
    assert reasons == FINISHED_REASONS
    (lora,) = [s for s in families["vllm:lora_requests_info"].samples]
    assert lora.labels == {
        "max_lora": "0",
        "running_lora_adapters": "",
        "waiting_lora_adapters": "",
    }
    for name, edges in VLLM_BUCKETS.items():
        bounds = [s.labels["le"] for s in families[name].samples if s.name.endswith("_bucket")]
        assert [float(b) for b in bounds] == [*edges, float("inf")], name


def test_vllm_values_move_with_the_requests_as_ours_do(one_slot):
    """Two streams and one plain answer: token counters equal what was sent and generated,
    one first-token and one end-to-end observation per request, and the same observations
    (same sums) under both names."""
    before = scrape(one_slot.url)
    with httpx.Client(base_url=one_slot.url, timeout=30) as client:
        streams = [
            stream_events(client, "/generate", {"inputs": PROMPT, "stream": True}) for _ in range(2)
        ]
        plain = client.post(
            "/generate", json={"inputs": PROMPT, "parameters": {"details": True}}
        ).json()["details"]
    after = scrape(one_slot.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    def vllm_delta(name: str, **labels: str) -> float:
        return delta(name, **LABELS, **labels)

    done = [stream[-1].json() for stream in streams] + [plain]
    # Greedy: the plain answer decoded as the streams did, so it saw as many token events.
    assert len({(d["sampled_tokens"], d["backtracks"]) for d in done}) == 1
    tokens_shown = [sum(1 for event in stream if event.event == "token") for stream in streams]
    tokens_shown.append(tokens_shown[0])
    assert vllm_delta("vllm:prompt_tokens_total") == sum(d["prompt_tokens"] for d in done) == 12
    assert vllm_delta("vllm:generation_tokens_total") == sum(d["sampled_tokens"] for d in done)
    assert vllm_delta("vllm:generation_tokens_total") == delta("backtrack_generated_tokens_total")
    assert vllm_delta("vllm:prompt_tokens_total") == delta("backtrack_prompt_tokens_total")
    assert vllm_delta("vllm:request_success_total", finished_reason="stop") == 3
    for other in FINISHED_REASONS - {"stop"}:
        assert vllm_delta("vllm:request_success_total", finished_reason=other) == 0
    inter_token = sum(shown - 1 for shown in tokens_shown)
    for name, count in (
        ("time_to_first_token_seconds", 3),
        ("inter_token_latency_seconds", inter_token),
        ("e2e_request_latency_seconds", 3),
    ):
        assert vllm_delta(f"vllm:{name}_count") == count, name
        assert vllm_delta(f"vllm:{name}_bucket", le="+Inf") == count, name
        assert vllm_delta(f"vllm:{name}_sum") == delta(f"backtrack_{name}_sum") > 0, name
    for suffix in ("_count", "_sum"):
        assert vllm_delta(f"vllm:time_per_output_token_seconds{suffix}") == vllm_delta(
            f"vllm:inter_token_latency_seconds{suffix}"
        )
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert vllm(after, f"vllm:{name}") == 0, name


def test_running_and_waiting_follow_the_queue_and_return_to_zero(one_slot):
    with (
        httpx.Client(base_url=one_slot.url, timeout=60) as client,
        ThreadPoolExecutor(1) as pool,
    ):
        with client.stream("POST", "/generate", json=LONG) as running:
            events = iter_events(running.iter_bytes())  # kept: dropping it closes the stream
            assert [next(events).event for _ in range(3)] == ["token"] * 3
            samples = scrape(one_slot.url)
            assert vllm(samples, "vllm:num_requests_running") == 1
            assert vllm(samples, "vllm:num_requests_waiting") == 0
            assert 0 < vllm(samples, "vllm:kv_cache_usage_perc") <= 1
            waiting = pool.submit(client.post, "/generate", json={"inputs": PROMPT})
            wait_for(lambda: vllm(scrape(one_slot.url), "vllm:num_requests_waiting") == 1)
            assert value(scrape(one_slot.url), "backtrack_queue_size") == 1
        # leaving the block disconnected the first stream: the waiting request runs and ends
        assert waiting.result().status_code == 200
    wait_for(lambda: idle(one_slot.url))


def test_kv_usage_returns_to_zero_when_the_last_request_ends_by_disconnect(one_slot):
    """No request finishes normally after the disconnect, so no decode step follows it: the
    gauge must be set when the request leaves, not only after a step."""
    before = scrape(one_slot.url)
    with httpx.stream("POST", f"{one_slot.url}/generate", json=LONG, timeout=60) as response:
        events = iter_events(response.iter_bytes())
        assert [next(events).event for _ in range(3)] == ["token"] * 3
        assert vllm(scrape(one_slot.url), "vllm:kv_cache_usage_perc") > 0
    wait_for(lambda: idle(one_slot.url))
    after = scrape(one_slot.url)
    aborted = vllm(after, "vllm:request_success_total", finished_reason="abort")
    assert aborted == vllm(before, "vllm:request_success_total", finished_reason="abort") + 1


def test_promtool_finds_nothing_but_vllms_colons(one_slot):
    """promtool lints colons in names (reserved for recording rules); vLLM's names have them,
    as vLLM's own /metrics does. Nothing else in the exposition is reported."""
    text = httpx.get(f"{one_slot.url}/metrics", timeout=10).text
    assert exposition_problems(text) == []
