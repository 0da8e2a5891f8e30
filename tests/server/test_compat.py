"""TGI's stream format and the openai SDK, against the real server process.

TGI's own Python client cannot be installed beside transformers 5, so its stream is checked by
the rules that client applies: every `data:` line is JSON with `index`, `token{id,text,logprob,
special}`, `generated_text` and `details`, only the last carries the text, and no `[DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.server.conftest import API_KEY, EXPECTED_TEXT, PROMPT
from tests.server.sse import stream_events

TGI_TOKEN_KEYS = {"id", "text", "logprob", "special"}
TGI_CLIENT_PARAMETERS = {
    "best_of": None,
    "decoder_input_details": False,
    "details": True,
    "do_sample": False,
    "frequency_penalty": None,
    "grammar": None,
    "max_new_tokens": 20,
    "repetition_penalty": None,
    "return_full_text": False,
    "seed": None,
    "stop": [],
    "temperature": None,
    "top_k": None,
    "top_n_tokens": None,
    "top_p": None,
    "truncate": None,
    "typical_p": None,
    "watermark": False,
}
"""Every field TGI's Python client sends, with its defaults."""


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


def check_tgi_stream(lines: list[dict], details: bool) -> None:
    for line in lines:
        assert {"index", "token", "generated_text", "details"} <= set(line)
        assert set(line["token"]) == TGI_TOKEN_KEYS
    assert all(line["generated_text"] is None for line in lines[:-1])
    assert lines[-1]["generated_text"] == EXPECTED_TEXT
    if details:
        final = lines[-1]["details"]
        assert final["finish_reason"] == "eos_token"
        assert final["generated_tokens"] == len(EXPECTED_TEXT)
        assert final["backtracks"] == 2


@pytest.mark.parametrize("route", ["/generate_stream", "/"])
def test_tgi_stream_never_shows_deleted_tokens(client, route):
    body = {"inputs": PROMPT, "parameters": TGI_CLIENT_PARAMETERS, "stream": True}
    events = stream_events(client, route, body)
    assert {event.event for event in events} == {"message"}  # plain data: lines, no names
    lines = [json.loads(event.data) for event in events]  # would fail on a [DONE] line
    check_tgi_stream(lines, details=True)
    assert "".join(line["token"]["text"] for line in lines) == EXPECTED_TEXT


def test_tgi_stream_live_shows_deletions_as_special_tokens(client):
    parameters = {"hold_back_deletable": False}
    events = stream_events(client, "/generate_stream", {"inputs": PROMPT, "parameters": parameters})
    lines = [event.json() for event in events]
    check_tgi_stream(lines, details=False)
    special = [line for line in lines if line["token"]["special"]]
    assert [line["backtrack"]["removed_text"] for line in special] == ["3", "x"]
    assert "".join(line["token"]["text"] for line in lines if not line["token"]["special"]) == (
        "32x ok"
    )


def test_tgi_generate_route_answers_like_tgi(client):
    body = {"inputs": PROMPT, "parameters": TGI_CLIENT_PARAMETERS, "stream": False}
    answers = client.post("/", json=body).json()
    assert isinstance(answers, list) and len(answers) == 1  # TGI answers a list on POST /
    answer = answers[0]
    assert answer["generated_text"] == EXPECTED_TEXT
    assert answer["details"]["finish_reason"] == "eos_token"
    assert answer["details"]["prefill"] == []
    assert all(set(token) == TGI_TOKEN_KEYS for token in answer["details"]["tokens"])


def test_openai_completion(sdk):
    completion = sdk.completions.create(
        model="scripted", prompt=PROMPT, max_tokens=20, temperature=0
    )
    choice = completion.choices[0]
    assert choice.text == EXPECTED_TEXT
    assert choice.finish_reason == "stop"
    assert completion.usage.completion_tokens == len(EXPECTED_TEXT)
    assert completion.usage.prompt_tokens == len(PROMPT)
    assert completion.model_extra["backtracks"] == 2


def test_openai_completion_stream_sends_only_kept_tokens(sdk):
    chunks = list(
        sdk.completions.create(
            model="scripted",
            prompt=PROMPT,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert "".join(texts) == EXPECTED_TEXT
    assert all(text in EXPECTED_TEXT for text in texts)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len(EXPECTED_TEXT)


def test_openai_chat_completion(sdk):
    messages = [{"role": "user", "content": PROMPT}]
    completion = sdk.chat.completions.create(model="scripted", messages=messages, temperature=0)
    message = completion.choices[0].message
    assert message.role == "assistant"
    # a plain-format checkpoint: one user message is the very prompt /generate sends
    assert message.content == EXPECTED_TEXT
    plain = sdk.completions.create(model="scripted", prompt=PROMPT, temperature=0)
    assert completion.usage.prompt_tokens == plain.usage.prompt_tokens
    assert completion.choices[0].finish_reason == "stop"


def test_openai_chat_stream_starts_with_the_role_and_replays_the_answer(sdk):
    messages = [{"role": "user", "content": PROMPT}]
    plain = sdk.chat.completions.create(model="scripted", messages=messages, temperature=0)
    chunks = list(
        sdk.chat.completions.create(model="scripted", messages=messages, temperature=0, stream=True)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert streamed == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_openai_live_stream_marks_deletions(sdk):
    stream = sdk.completions.create(
        model="scripted",
        prompt=PROMPT,
        max_tokens=20,
        temperature=0,  # OpenAI samples by default; the script's runner-up has p ~ 0.7%
        stream=True,
        extra_body={"hold_back_deletable": False},
    )
    choices = [chunk.choices[0] for chunk in stream]
    removed = [
        c.model_extra["backtrack"]["removed_text"]
        for c in choices
        if c.model_extra.get("backtrack")
    ]
    assert removed == ["3", "x"]


def test_openai_models_lists_the_served_model(sdk, client):
    served = client.get("/info").json()["model_id"]
    assert [model.id for model in sdk.models.list()] == [served]


def test_openai_errors_use_the_openai_shape(sdk):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.completions.create(model="scripted", prompt=PROMPT, top_p=2.0)
    error = raised.value.body
    assert error["param"] == "top_p"
    assert "top_p" in error["message"]
