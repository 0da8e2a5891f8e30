"""A stream that is silent for longer than a proxy's read timeout survives: pings keep it busy.

Over a real server process: one request holds the only slot, a second waits in the queue,
silent (no event) for 2 s, read with a 1 s read timeout like a proxy's. With pings every 0.3 s
it is never cut, and once the slot frees it streams to its `done`.
"""

from __future__ import annotations

import threading
import time

import httpx

from clients.sse import iter_events
from server.process import running_server
from tests.server.conftest import LOOP_PROMPT

SILENCE = 2.0
READ_TIMEOUT = 1.0
PING = 0.3


def hold_the_slot(url: str, started: threading.Event, release: threading.Event) -> None:
    body = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 4000}, "stream": True}
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=30) as response:
        events = iter_events(response.iter_bytes())  # kept: dropping it closes the stream
        next(events)
        started.set()
        release.wait(30)  # leaving closes the connection, which cancels the generation


def test_a_queued_stream_silent_past_the_read_timeout_is_kept_alive(scripted_checkpoint_dir):
    settings = {"max_concurrent_requests": 1, "sse_ping_interval": PING, "max_new_tokens": 4000}
    with running_server(scripted_checkpoint_dir, **settings) as server:
        started, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=hold_the_slot, args=(server.url, started, release))
        holder.start()
        assert started.wait(30)
        threading.Timer(SILENCE, release.set).start()
        body = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 5}, "stream": True}
        timeout = httpx.Timeout(READ_TIMEOUT, connect=10)
        lines, begun = [], time.monotonic()
        with httpx.stream("POST", f"{server.url}/generate", json=body, timeout=timeout) as reply:
            assert reply.status_code == 200
            first_event_at = None
            for line in reply.iter_lines():
                lines.append(line)
                if line.startswith("event:") and first_event_at is None:
                    first_event_at = time.monotonic() - begun
        holder.join(30)
    pings_before = [line for line in lines[: lines.index("event: token")] if line.startswith(":")]
    assert first_event_at is not None and first_event_at >= SILENCE - 0.2
    assert len(pings_before) >= 3  # silent 2 s at 0.3 s: pings, each resetting the read timeout
    assert "event: done" in lines
