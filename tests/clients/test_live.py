"""The clients against the real server process, on a checkpoint that backtracks at known places.

`1+1=` decodes greedily as: token "3", backtrack, "2", "x", backtrack, " ", "o", "k", EOS.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest

from clients import (
    AsyncBacktrackClient,
    AuthenticationError,
    BacktrackClient,
    BacktrackEvent,
    RetryPolicy,
    TokenEvent,
    ValidationError,
)
from server.process import running_server
from tests.clients.conftest import API_KEY


@pytest.fixture
def client(live_server):
    with BacktrackClient(live_server.url, api_key=API_KEY, timeout=30) as client:
        yield client


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's Prometheus exposition (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_stream_shows_the_deletions_and_ends_on_generates_text(client):
    updates = list(client.stream("1+1=", max_new_tokens=16))
    deleted = [u.event.removed_text for u in updates if isinstance(u.event, BacktrackEvent)]
    texts = [update.text for update in updates]
    assert deleted == ["3", "x"]
    assert texts[:5] == ["3", "", "2", "2x", "2"]
    result = client.generate("1+1=", max_new_tokens=16)
    assert texts[-1] == updates[-1].event.generated_text == result.generated_text == "2 ok"
    assert updates[-2].text == "2 ok"  # the events applied in order, before done says so
    assert result.details.backtracks == 2
    assert [token["text"] for token in result.details.deleted_tokens] == ["3", "x"]


def test_async_client_sees_the_same_stream(live_server, client):
    async def run():
        async with AsyncBacktrackClient(live_server.url, api_key=API_KEY) as async_client:
            updates = [update async for update in async_client.stream("1+1=")]
            result = await async_client.generate("1+1=")
        return updates, result

    updates, result = asyncio.run(run())
    sync_events = [update.event for update in client.stream("1+1=")]
    assert [update.event for update in updates] == sync_events
    assert result.generated_text == updates[-1].text == "2 ok"


def test_server_refusals_carry_the_servers_message(live_server, client):
    with (
        BacktrackClient(live_server.url) as anonymous,
        pytest.raises(AuthenticationError) as caught,
    ):
        anonymous.generate("1+1=")
    assert caught.value.status == 401 and "API key" in caught.value.message
    with pytest.raises(ValidationError) as caught:
        list(client.stream("1+1=", temperature=-1.0))
    assert caught.value.status == 422
    assert "temperature" in caught.value.message


def test_leaving_a_stream_early_cancels_the_generation(live_server, client):
    before = metric(
        live_server.url, "backtrack_requests_total", endpoint="/generate", finish_reason="cancelled"
    )
    stream = client.stream("zz", max_new_tokens=4000)
    first = [next(stream) for _ in range(3)]
    assert all(isinstance(update.event, TokenEvent) for update in first)
    stream.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = metric(
            live_server.url,
            "backtrack_requests_total",
            endpoint="/generate",
            finish_reason="cancelled",
        )
        if after > before:
            break
        time.sleep(0.05)
    assert after == before + 1


def test_a_full_server_is_retried_until_a_slot_frees(backtracking_checkpoint_dir):
    settings = {"max_concurrent_requests": 1, "max_queue_size": 0, "max_new_tokens": 100_000}
    with running_server(backtracking_checkpoint_dir, **settings) as server:
        holder = BacktrackClient(server.url)
        busy = holder.stream("zz", max_new_tokens=100_000)
        next(busy)  # the only slot is taken
        results = []
        patient = BacktrackClient(server.url, retry=RetryPolicy(max_retries=10, max_wait=2.0))
        waiter = threading.Thread(target=lambda: results.append(patient.generate("1+1=")))
        waiter.start()
        refused, deadline = 0.0, time.monotonic() + 10
        while refused < 1 and time.monotonic() < deadline:
            refused = metric(
                server.url,
                "backtrack_rejected_requests_total",
                endpoint="/generate",
                reason="overloaded",
            )
            time.sleep(0.05)
        busy.close()  # frees the slot; the waiting client's next retry gets in
        waiter.join(timeout=30)
        holder.close()
        patient.close()
    assert refused >= 1
    assert [result.generated_text for result in results] == ["2 ok"]
