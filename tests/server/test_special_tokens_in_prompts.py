"""A special token written in prompt text (`<|BACKTRACK|>`, EOS) never becomes the control token
by default: it is refused by name (`special_tokens_in_prompts` refuse), or with `text` encoded as
plain characters; `parse` (vLLM's and TGI's behaviour) is there for clients that want it.
Token-id prompts are ids already and pass as given."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from backtrack.tiny import EOS
from backtrack.tokens import BACKTRACK_TOKEN
from server.process import ServerHandle, running_server
from tests.server.conftest import API_KEY

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
INJECTED = f"a{BACKTRACK_TOKEN}b"
"""Three tokens (a, BT, b) if the server parses it; 15 characters as text."""


@pytest.mark.parametrize("special", [BACKTRACK_TOKEN, EOS])
def test_special_tokens_in_text_are_refused_by_default_naming_the_field(server, special):
    text = f"a{special}b"
    cases = [
        ("/v1/completions", {"prompt": text, "max_tokens": 4}, "prompt"),
        ("/v1/completions", {"prompt": ["ab", text], "max_tokens": 4}, "prompt.1"),
        ("/generate", {"inputs": text}, "inputs"),
        ("/generate_stream", {"inputs": text}, "inputs"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": text}]},
            "messages.1.content",
        ),
    ]
    for route, body, field in cases:
        response = httpx.post(f"{server.url}{route}", json=body, headers=HEADERS, timeout=30)
        assert response.status_code == 422, (route, response.text)
        error = response.json()["error"]
        message = error if isinstance(error, str) else error["message"]
        assert field in message and special in message, message
        assert "special_tokens_in_prompts" in message
    assert httpx.get(f"{server.url}/info").json()["special_tokens_in_prompts"] == "refuse"


def test_token_id_prompts_may_hold_the_backtrack_id(server):
    bt_id = httpx.get(f"{server.url}/info").json()["backtrack_token_id"]
    body = {"prompt": [30, bt_id, 31], "max_tokens": 1}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers=HEADERS, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 3


@pytest.fixture(scope="module", params=["text", "parse"])
def mode_server(request, scripted_checkpoint_dir) -> Iterator[tuple[str, ServerHandle]]:
    with running_server(scripted_checkpoint_dir, special_tokens_in_prompts=request.param) as handle:
        yield request.param, handle


def test_text_keeps_the_characters_and_parse_makes_the_token(mode_server):
    mode, handle = mode_server
    expected = len(INJECTED) if mode == "text" else 3
    body = {"prompt": INJECTED, "max_tokens": 1, "echo": True, "logprobs": 0}
    answer = httpx.post(f"{handle.url}/v1/completions", json=body, timeout=30).json()
    assert answer["usage"]["prompt_tokens"] == expected
    assert (BACKTRACK_TOKEN in answer["choices"][0]["logprobs"]["tokens"]) == (mode == "parse")
    chat = {"messages": [{"role": "user", "content": INJECTED}], "max_tokens": 1}
    answer = httpx.post(f"{handle.url}/v1/chat/completions", json=chat, timeout=30).json()
    assert answer["usage"]["prompt_tokens"] == expected
    details = {"inputs": INJECTED, "parameters": {"max_new_tokens": 1, "details": True}}
    answer = httpx.post(f"{handle.url}/generate", json=details, timeout=30)
    assert answer.status_code == 200, answer.text
