"""GET /metrics: parses with Prometheus's parser and counts what the streams showed."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import API_KEY, LOOP_PROMPT, PROMPT
from tests.server.metrics_text import scrape, value
from tests.server.sse import stream_events

CONTRACT = {
    "backtrack_requests": "counter",
    "backtrack_rejected_requests": "counter",
    "backtrack_generated_tokens": "counter",
    "backtrack_prompt_tokens": "counter",
    "backtrack_backtracks": "counter",
    "backtrack_request_backtracks": "histogram",
    "backtrack_deleted_tokens": "counter",
    "backtrack_time_to_first_token_seconds": "histogram",
    "backtrack_inter_token_latency_seconds": "histogram",
    "backtrack_e2e_request_latency_seconds": "histogram",
    "backtrack_queue_size": "gauge",
    "backtrack_running_requests": "gauge",
    "backtrack_kv_cache_tokens": "gauge",
    "backtrack_kv_cache_slots": "gauge",
    "backtrack_kv_cache_reserved_tokens": "gauge",
    "backtrack_kv_cache_budget_tokens": "gauge",
    "backtrack_kv_cache_usage_ratio": "gauge",
    "backtrack_batch_size": "histogram",
    "backtrack_decode_step_seconds": "histogram",
    "backtrack_prefill_step_seconds": "histogram",
}


def test_exposition_parses_and_has_every_metric(server):
    httpx.post(f"{server.url}/generate", json={"inputs": PROMPT})  # a refusal: 401
    text = httpx.get(f"{server.url}/metrics").text
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert {name: families.get(name) for name in CONTRACT} == CONTRACT


def test_latency_buckets_resolve_milliseconds_and_minutes(server):
    samples = scrape(server.url)
    bounds = {
        float(dict(labels)["le"])
        for name, labels in samples
        if name == "backtrack_time_to_first_token_seconds_bucket"
    }
    assert min(bounds) <= 0.001
    assert max(bounds - {float("inf")}) >= 600


def test_metrics_count_the_backtracks_the_streams_showed(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    before = scrape(server.url)
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        streams = [
            stream_events(client, "/generate", {"inputs": PROMPT, "stream": True}) for _ in range(3)
        ]
    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    shown = sum(1 for stream in streams for event in stream if event.event == "backtrack")
    done = [stream[-1].json() for stream in streams]
    assert shown == sum(d["backtracks"] for d in done) == 6
    assert delta("backtrack_backtracks_total") == shown
    assert delta("backtrack_deleted_tokens_total") == shown
    assert delta("backtrack_request_backtracks_count") == 3
    assert delta("backtrack_request_backtracks_sum") == shown
    assert delta("backtrack_requests_total", endpoint="/generate", finish_reason="eos") == 3
    assert delta("backtrack_generated_tokens_total") == sum(d["sampled_tokens"] for d in done)
    assert delta("backtrack_prompt_tokens_total") == 3 * len(PROMPT)
    assert delta("backtrack_time_to_first_token_seconds_count") == 3
    assert delta("backtrack_e2e_request_latency_seconds_count") == 3
    tokens_shown = sum(1 for stream in streams for event in stream if event.event == "token")
    assert delta("backtrack_inter_token_latency_seconds_count") == tokens_shown - 3
    assert value(after, "backtrack_running_requests") == 0


def test_refused_requests_are_counted_by_reason(server):
    before = scrape(server.url)
    httpx.post(f"{server.url}/generate", json={"inputs": PROMPT})  # no API key
    after = scrape(server.url)
    labels = {"endpoint": "/generate", "reason": "unauthorized"}
    name = "backtrack_rejected_requests_total"
    assert value(after, name, **labels) == value(before, name, **labels) + 1


def test_concurrent_streams_share_batched_steps_and_the_metrics_add_up(server):
    """Four streams at once: they run in the same forwards, and every count matches them."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    before = scrape(server.url)

    def one_stream(index: int) -> list:
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            body = {"inputs": PROMPT, "stream": True}
            if index % 2:  # long streams, so the four surely overlap
                body = {
                    "inputs": LOOP_PROMPT,
                    "stream": True,
                    "parameters": {"max_new_tokens": 150},
                }
            return stream_events(client, "/generate", body)

    with ThreadPoolExecutor(4) as pool:
        streams = list(pool.map(one_stream, range(4)))
    after = scrape(server.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    done = [stream[-1].json() for stream in streams]
    assert [d["generated_text"] for d in done] == ["2 ok", "z" * 150] * 2
    shown = sum(1 for stream in streams for event in stream if event.event == "backtrack")
    assert delta("backtrack_backtracks_total") == shown == 4
    assert delta("backtrack_generated_tokens_total") == sum(d["sampled_tokens"] for d in done)
    steps = delta("backtrack_batch_size_count")
    rows = delta("backtrack_batch_size_sum")
    assert steps > 0 and rows / steps > 1  # some forwards carried more than one stream
    assert delta("backtrack_decode_step_seconds_count") == steps
    assert value(after, "backtrack_kv_cache_tokens") == 0
    assert value(after, "backtrack_kv_cache_reserved_tokens") == 0


def test_posts_to_made_up_paths_do_not_grow_the_metrics(server):
    """Labels are route templates: 200 made-up paths add one label set, not 200."""
    before = httpx.get(f"{server.url}/metrics").text.count("\n")
    keyed = {"Authorization": f"Bearer {API_KEY}"}
    for index in range(200):
        reply = httpx.post(f"{server.url}/made-up/{index}", json={}, headers=keyed)
        assert reply.status_code == 404
        assert httpx.post(f"{server.url}/made-up/{index}", json={}).status_code == 401
    httpx.post(f"{server.url}/health", json={})  # 405 on a real path: its template
    samples = scrape(server.url)
    rejected = {
        dict(labels)["endpoint"]
        for name, labels in samples
        if name == "backtrack_rejected_requests_total"
    }
    assert not any(endpoint.startswith("/made-up") for endpoint in rejected)
    assert (
        value(samples, "backtrack_rejected_requests_total", endpoint="unmatched", reason="http")
        >= 200
    )
    unauthorized = {"endpoint": "unmatched", "reason": "unauthorized"}
    assert value(samples, "backtrack_rejected_requests_total", **unauthorized) >= 200
    assert httpx.get(f"{server.url}/metrics").text.count("\n") <= before + 10
