"""Scoring (`logprobs`, `echo`) is bounded per request and admitted like generation: it takes a
queue place, is refused with 429 when none is left, and is skipped when its caller has gone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from clients.sse import iter_events
from server.calls import PendingCall
from server.process import ServerHandle, running_server
from tests.server.conftest import API_KEY, EXPECTED_TEXT, LOOP_PROMPT, PROMPT
from tests.server.test_faults import idle, wait_for

HEADERS = {"Authorization": f"Bearer {API_KEY}"}


def test_logprobs_past_the_per_request_bound_are_refused_before_any_work(server):
    """n 16 x 4000 tokens x 21 alternatives: over a million lines of answer, one forward each."""
    body = {"prompt": PROMPT, "n": 16, "max_tokens": 4000, "logprobs": 20, "echo": True}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=HEADERS, timeout=30)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "logprobs"
    assert "max_scored_logprobs" in error["message"]
    limit = httpx.get(f"{server.url}/info", headers=HEADERS).json()["max_scored_logprobs"]
    assert limit == 65536


def test_chat_top_logprobs_are_bounded_too(server):
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "n": 16,
        "max_tokens": 4000,
        "logprobs": True,
        "top_logprobs": 20,
        "stream": True,
    }
    url = f"{server.url}/v1/chat/completions"
    response = httpx.post(url, json=body, headers=HEADERS, timeout=30)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "logprobs"


def test_logprobs_within_the_bound_are_served(server):
    body = {"prompt": PROMPT, "max_tokens": 4, "logprobs": 2, "echo": True}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=HEADERS, timeout=30)
    assert response.status_code == 200
    assert len(response.json()["choices"][0]["logprobs"]["tokens"]) > 0


@pytest.fixture(scope="module")
def one_place(scripted_checkpoint_dir) -> Iterator[ServerHandle]:
    """One decoding slot and no queue: a running stream takes the only place."""
    with running_server(
        scripted_checkpoint_dir, max_concurrent_requests=1, max_queue_size=0, max_new_tokens=4000
    ) as handle:
        yield handle


def test_scoring_needs_a_place_and_gets_429_when_every_place_is_taken(one_place):
    """lm-eval's loglikelihood request (`max_tokens` 0, `echo`, `logprobs`) generates nothing
    but runs a forward: with every place taken it is refused like a generation, not queued
    outside admission."""
    scoring = {"prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 1}
    looping = {"inputs": LOOP_PROMPT, "parameters": {"max_new_tokens": 4000}, "stream": True}
    with httpx.Client(base_url=one_place.url, timeout=30) as client:
        with client.stream("POST", "/generate", json=looping) as running:
            events = iter_events(running.iter_bytes())
            assert next(events).event == "token"  # the only place is taken
            refused = client.post("/v1/completions", json=scoring)
        assert refused.status_code == 429
        assert "max_queue_size" in refused.json()["error"]["message"]
        wait_for(lambda: idle(one_place.url))  # the stream left: its place is free again
        served = client.post("/v1/completions", json=scoring)
        assert served.status_code == 200
        assert served.json()["choices"][0]["logprobs"]["tokens"]


def test_a_call_whose_caller_left_is_not_run():
    """A client that disconnects cancels its scoring future: the worker skips the forward."""
    ran: list[bool] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        call = PendingCall(lambda: ran.append(True), future, loop)
        future.cancel()
        call.run()

    asyncio.run(scenario())
    assert ran == []


def streamed_logprobs(client: httpx.Client, path: str, body: dict) -> tuple[str, list[dict]]:
    """A streamed OpenAI answer's text and every chunk's `logprobs`; it must end with `[DONE]`."""
    chunks, text = [], ""
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        events = list(iter_events(response.iter_bytes()))
    assert events[-1].data == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event.data)
        assert "error" not in chunk, chunk
        for choice in chunk["choices"]:
            text += choice.get("text") or choice.get("delta", {}).get("content") or ""
            if choice["logprobs"]:
                chunks.append(choice["logprobs"])
    return text, chunks


@pytest.mark.parametrize("mode", ["rewind", "keep"])
def test_a_stream_with_logprobs_needs_no_second_place(one_place, mode):
    """A streamed token's logprobs come from the step that drew it (rewind) or from a forward
    its own running request holds the place for (keep): a stream that took the only place is
    served whole, where a scoring call per token would be refused mid-stream."""
    chat = {
        "messages": [{"role": "user", "content": LOOP_PROMPT}],
        "logprobs": True,
        "top_logprobs": 2,
        "max_tokens": 6,
        "mode": mode,
    }
    completion = {"prompt": LOOP_PROMPT, "logprobs": 2, "echo": True, "max_tokens": 6}
    completion["mode"] = mode
    with httpx.Client(base_url=one_place.url, timeout=30) as client:
        chat_text, chat_chunks = streamed_logprobs(client, "/v1/chat/completions", chat)
        text, completion_chunks = streamed_logprobs(client, "/v1/completions", completion)
    content = [entry for chunk in chat_chunks for entry in chunk["content"]]
    assert chat_text and "".join(entry["token"] for entry in content) == chat_text
    assert all(len(entry["top_logprobs"]) == 2 for entry in content)
    tokens = [token for chunk in completion_chunks for token in chunk["tokens"]]
    assert text == LOOP_PROMPT + "z" * 6  # the echoed prompt, then the answer
    assert "".join(tokens) == text


def test_step_scores_match_the_scoring_forward(one_place):
    """The same figures as before: a non-streamed answer's logprobs (from its steps) equal the
    echo scoring forward over prompt + answer (max_tokens 0), which is what lm-eval reads."""
    with httpx.Client(base_url=one_place.url, timeout=30) as client:
        answer = client.post(
            "/v1/completions", json={"prompt": PROMPT, "logprobs": 3, "max_tokens": 6}
        ).json()["choices"][0]
        scored = client.post(
            "/v1/completions",
            json={"prompt": PROMPT + answer["text"], "logprobs": 3, "max_tokens": 0, "echo": True},
        ).json()["choices"][0]
    generated, whole = answer["logprobs"], scored["logprobs"]
    count = len(generated["tokens"])
    assert "".join(generated["tokens"]) == EXPECTED_TEXT
    assert whole["tokens"][-count:] == generated["tokens"]
    step, forward = generated["token_logprobs"], whole["token_logprobs"][-count:]
    assert step == pytest.approx(forward, abs=1e-3)
    for ours, theirs in zip(generated["top_logprobs"], whole["top_logprobs"][-count:], strict=True):
        assert set(ours) == set(theirs)
        assert list(ours.values()) == pytest.approx(list(theirs.values()), abs=1e-3)
