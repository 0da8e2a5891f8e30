"""Bad input answers 422 naming the field; a missing API key answers 401. Never a 500."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from clients.sse import iter_events
from server.process import ServerHandle, running_server
from tests.server.conftest import API_KEY, PAGE_ORIGIN, PROMPT


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"parameters": {}}, "inputs"),
        ({"inputs": 5}, "inputs"),
        ({"inputs": ""}, "inputs"),
        ({"inputs": "x" * 65}, "inputs"),
        ({"inputs": PROMPT, "parameters": {"temperature": 0}}, "parameters.temperature"),
        ({"inputs": PROMPT, "parameters": {"temperature": "hot"}}, "parameters.temperature"),
        ({"inputs": PROMPT, "parameters": {"top_p": 1.5}}, "parameters.top_p"),
        ({"inputs": PROMPT, "parameters": {"top_k": 0}}, "parameters.top_k"),
        ({"inputs": PROMPT, "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens"),
        ({"inputs": PROMPT, "parameters": {"max_new_tokens": 4001}}, "parameters.max_new_tokens"),
        ({"inputs": PROMPT, "parameters": {"mode": "erase"}}, "parameters.mode"),
        ({"inputs": PROMPT, "parameters": {"max_backtracks": -1}}, "parameters.max_backtracks"),
        ({"inputs": PROMPT, "parameters": {"stop": [""]}}, "parameters.stop"),
        ({"inputs": PROMPT, "parameters": {"temprature": 1.0}}, "parameters.temprature"),
        ({"inputs": PROMPT, "parameters": {"watermark": True}}, "parameters.watermark"),
        ({"inputs": PROMPT, "parameters": {"best_of": 2}}, "parameters.best_of"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_generate_body_is_422_naming_the_field(client, body, field, stream):
    response = client.post("/generate", json={**body, "stream": stream})
    assert response.status_code == 422
    error = response.json()
    assert error["error_type"] == "validation"
    assert error["field"] == field
    assert field in error["error"]


def test_body_that_is_not_json_is_422(client):
    response = client.post(
        "/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["field"] == "body"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": PROMPT, "temperature": -1}, "temperature"),
        ({"prompt": PROMPT, "max_tokens": 100000}, "max_tokens"),
        ({"prompt": PROMPT, "n": 17}, "n"),
        ({"prompt": []}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),
        ({"max_tokens": 3}, "prompt"),
        ({"prompt": PROMPT, "logprobs": 21}, "logprobs"),
        ({"prompt": PROMPT, "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": PROMPT, "response_format": {"type": "json_object"}}, "response_format.type"),
        ({"prompt": PROMPT, "suffix": "x"}, "suffix"),
    ],
)
def test_invalid_openai_body_is_422_in_openai_shape(client, body, param):
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == param
    assert param in error["message"]


def test_chat_without_messages_is_422(client):
    response = client.post("/v1/chat/completions", json={"messages": []})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "messages"


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/generate", {"inputs": PROMPT}),
        ("/generate_stream", {"inputs": PROMPT}),
        ("/", {"inputs": PROMPT}),
        ("/v1/completions", {"prompt": PROMPT}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": PROMPT}]}),
        ("/v1/responses", {"input": PROMPT}),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong"])
def test_generation_needs_the_api_key(server, route, body, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(f"{server.url}{route}", json=body, headers=headers, timeout=30)
    assert response.status_code == 401
    assert "API key" in response.text


def test_openai_sdk_without_the_key_gets_an_authentication_error(server):
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk.completions.create(model="m", prompt=PROMPT)


@pytest.mark.parametrize("route", ["/health", "/metrics"])
def test_health_and_metrics_need_no_key(server, route):
    assert httpx.get(f"{server.url}{route}").status_code == 200


def test_info_describes_model_and_limits(client):
    info = client.get("/info").json()
    assert info["backtrack_token"] == "<|BACKTRACK|>"
    assert isinstance(info["backtrack_token_id"], int)
    assert info["max_input_tokens"] == 64
    assert info["max_new_tokens"] == 4000
    assert info["version"]


def test_openapi_docs_are_served(client):
    schema = client.get("/openapi.json").json()
    routes = {"/generate", "/generate_stream", "/v1/completions", "/v1/chat/completions"}
    assert routes | {"/v1/responses"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_cors_allows_the_configured_origin_only(server):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    allowed = httpx.options(f"{server.url}/generate", headers={"Origin": PAGE_ORIGIN, **preflight})
    assert allowed.headers.get("access-control-allow-origin") == PAGE_ORIGIN
    other = httpx.options(
        f"{server.url}/generate", headers={"Origin": "http://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in other.headers


def test_root_serves_the_web_page(server):
    response = httpx.get(f"{server.url}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


def test_the_x_api_key_header_is_accepted(server):
    response = httpx.post(
        f"{server.url}/generate", json={"inputs": PROMPT}, headers={"x-api-key": API_KEY}
    )
    assert response.status_code == 200
    wrong = httpx.post(
        f"{server.url}/generate", json={"inputs": PROMPT}, headers={"x-api-key": "wrong"}
    )
    assert wrong.status_code == 401


def test_openai_stop_given_as_a_string(client):
    answer = client.post("/v1/completions", json={"prompt": PROMPT, "stop": "o"}).json()
    assert answer["choices"][0]["text"] == "2 "
    assert answer["choices"][0]["finish_reason"] == "stop"


def sampled_texts(client, **parameters) -> set[str]:
    """What five seeds sample at a hot temperature (BT is still decided untempered)."""
    texts = set()
    for seed in range(5):
        sampling = {"do_sample": True, "temperature": 5.0, "seed": seed, **parameters}
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 8, **sampling}}
        texts.add(client.post("/generate", json=body).json()["generated_text"])
    return texts


def test_hot_sampling_without_top_p_or_min_p_wanders(client):
    assert sampled_texts(client) != {"2 ok"}


@pytest.mark.parametrize("parameters", [{"top_p": 0.01}, {"min_p": 0.99}])
def test_top_p_and_min_p_keep_only_the_likeliest_token(client, parameters):
    assert sampled_texts(client, **parameters) == {"2 ok"}


@pytest.fixture(scope="module")
def grown_tokenizer_server(
    scripted_checkpoint_dir, tmp_path_factory
) -> Iterator[tuple[ServerHandle, int]]:
    """The scripted checkpoint whose tokenizer gained two tokens after the model was saved,
    with the model's embedding rows (the first id it cannot embed)."""
    directory = tmp_path_factory.mktemp("grown-tokenizer")
    shutil.copytree(scripted_checkpoint_dir, directory, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    embedding_rows = len(tokenizer)
    tokenizer.add_tokens(["<new-a>", "<new-b>"])
    tokenizer.save_pretrained(directory)
    with running_server(directory, max_new_tokens=4000) as handle:
        yield handle, embedding_rows


def test_an_id_the_embedding_cannot_hold_is_a_422_and_the_batch_goes_on(grown_tokenizer_server):
    """An id below the tokenizer's size but past the embedding's rows is refused by name before
    it reaches the batch: a running stream beside it ends normally and /health stays 200."""
    handle, embedding_rows = grown_tokenizer_server
    url = handle.url
    looping = {"inputs": "zz", "parameters": {"max_new_tokens": 40}, "stream": True}
    with httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/generate", json=looping) as stream:
            events = iter_events(stream.iter_bytes())
            assert next(events).event == "token"
            for bad in (embedding_rows, embedding_rows + 1, -1):
                refused = client.post("/v1/completions", json={"prompt": [bad], "max_tokens": 2})
                assert refused.status_code == 422, bad
                assert refused.json()["error"]["param"] == "prompt"
            assert [event.event for event in events][-1] == "done"
        assert client.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/v1/completions", '{"model": "\\ud800", "prompt": "1+1="}', "model"),
        (
            "/v1/chat/completions",
            '{"model": "\\ud800", "messages": [{"role": "user", "content": "a"}]}',
            "model",
        ),
        ("/v1/completions", '{"prompt": "1+1=\\udfff"}', "prompt"),
        ("/generate", '{"inputs": "1+1=\\ud800"}', "inputs"),
        (
            "/generate",
            '{"inputs": "1+1=", "parameters": {"stop": ["\\ud800"]}}',
            "parameters.stop.0",
        ),
    ],
)
def test_a_lone_surrogate_is_a_422_naming_the_field(client, route, body, field):
    """JSON may escape half of a UTF-16 pair; no text holding one can be encoded, so it is
    refused by name instead of failing later (the `model` echoed in a 404 was a 500)."""
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()
    named = error["field"] if route == "/generate" else error["error"]["param"]
    assert named == field
