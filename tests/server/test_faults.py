"""Overload, timeouts, disconnects and concurrency, on real server processes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from clients.sse import iter_events
from server.process import ServerHandle, running_server
from tests.server.conftest import API_KEY, LOOP_PROMPT
from tests.server.metrics_text import scrape, value

LONG = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 4000}, "stream": True}
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def limited(scripted_checkpoint_dir) -> Iterator[ServerHandle]:
    """One decoding slot, no queue, short request timeout."""
    with running_server(
        scripted_checkpoint_dir,
        max_concurrent_requests=1,
        max_queue_size=0,
        max_new_tokens=4000,
        request_timeout=TIMEOUT,
    ) as handle:
        yield handle


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


IDLE_GAUGES = (
    "backtrack_running_requests",
    "backtrack_queue_size",
    "backtrack_kv_cache_tokens",
    "backtrack_kv_cache_slots",
    "backtrack_kv_cache_usage_ratio",
)
"""What an autoscaler or the endpoint picker reads: all 0 once every request has left."""


def idle(url: str) -> bool:
    """No request running or waiting, and no KV cache left, by every gauge."""
    samples = scrape(url)
    names = IDLE_GAUGES
    return all(value(samples, name) == 0 for name in names)


def test_full_server_answers_429_at_once_with_retry_after(limited):
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        with client.stream("POST", "/generate", json=LONG) as running:
            events = iter_events(running.iter_bytes())  # kept: dropping it closes the stream
            assert next(events).event == "token"  # the only slot is taken
            started = time.monotonic()
            refused = client.post("/generate", json={"inputs": "1+1="})
            assert time.monotonic() - started < 1.0
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error_type"] == "overloaded"
    wait_for(lambda: idle(limited.url))


def test_request_timeout_ends_the_stream_with_a_done_event(limited):
    started = time.monotonic()
    with httpx.stream("POST", f"{limited.url}/generate", json=LONG, timeout=30) as response:
        events = list(iter_events(response.iter_bytes()))
    assert events[-1].event == "done"
    assert events[-1].json()["finish_reason"] == "timeout"
    assert TIMEOUT <= time.monotonic() - started < TIMEOUT + 3
    wait_for(lambda: idle(limited.url), timeout=1.0)  # the gauges do not keep its load


def test_disconnect_cancels_the_generation_and_frees_the_slot(limited):
    before = scrape(limited.url)
    with httpx.Client(base_url=limited.url, timeout=30) as client:
        with client.stream("POST", "/generate", json=LONG) as response:
            events = iter_events(response.iter_bytes())
            assert [next(events).event for _ in range(3)] == ["token"] * 3
            assert value(scrape(limited.url), "backtrack_kv_cache_tokens") > 0
        # leaving the block closed the connection mid-stream
        wait_for(lambda: idle(limited.url), timeout=1.0)
        after = scrape(limited.url)
        cancelled = {"endpoint": "/generate", "finish_reason": "cancelled"}
        assert value(after, "backtrack_requests_total", **cancelled) == (
            value(before, "backtrack_requests_total", **cancelled) + 1
        )
        # the only slot is free again
        assert client.post("/generate", json={"inputs": "1+1="}).status_code == 200


def test_disconnect_cancels_a_non_streaming_request(limited):
    cancelled = {"endpoint": "/generate", "finish_reason": "cancelled"}
    before = value(scrape(limited.url), "backtrack_requests_total", **cancelled)
    body = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 4000}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{limited.url}/generate", json=body, timeout=0.3)
    wait_for(lambda: idle(limited.url), timeout=1.0)
    assert value(scrape(limited.url), "backtrack_requests_total", **cancelled) == before + 1


def test_concurrent_streams_interleave(server):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        httpx.Client(base_url=server.url, headers=headers, timeout=30) as client,
        client.stream("POST", "/generate", json=LONG) as first,
    ):
        first_events = iter_events(first.iter_bytes())
        assert next(first_events).event == "token"
        with client.stream("POST", "/generate", json=LONG) as second:
            second_events = iter_events(second.iter_bytes())
            # the second request makes progress while the first is still running
            assert [next(second_events).event for _ in range(5)] == ["token"] * 5
            assert value(scrape(server.url), "backtrack_running_requests") == 2
            assert next(first_events).event == "token"
    wait_for(lambda: idle(server.url))
