"""Read a whole SSE answer in a test, with the project's one SSE reader (`clients.sse`)."""

from __future__ import annotations

import httpx

from clients.sse import ServerSentEvent, iter_events


def stream_events(
    client: httpx.Client, url: str, body: dict, headers: dict | None = None
) -> list[ServerSentEvent]:
    """POST `body` and read the whole SSE answer (asserting it is one)."""
    with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(iter_events(response.iter_bytes()))
