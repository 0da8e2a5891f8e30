"""Every request limit refuses with 422 (413 for the body) before any work, over real HTTP;
the limits appear in /info and in the OpenAPI schema. Inputs that once reached the worker
(a negative seed, a vanishing temperature, a chat template that raises) are 422 too; a seed of
any size is taken modulo 2**64, so the schema needs no maximum JSON tools would round."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backtrack.checkpoint import load_metadata, save_metadata
from server.process import ServerHandle, running_server
from tests.server.conftest import API_KEY, PROMPT, SCRIPT, save_scripted_checkpoint

STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant/user/...') }}{% endif %}"
    "{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}={% endif %}"
)
"""Like Llama-2's and Mistral's templates: alternating roles only, no `developer`."""


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def refused(response: httpx.Response, field: str, status: int = 422) -> str:
    """Assert the refusal names `field` in whichever error shape the route uses; its message."""
    assert response.status_code == status, response.text
    body = response.json()
    if isinstance(body["error"], dict):  # OpenAI's shape under /v1
        assert body["error"]["param"] == field
        return body["error"]["message"]
    assert body["field"] == field
    return body["error"]


@pytest.mark.parametrize(
    ("parameters", "field", "words"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "parameters.stop", "limit is 4"),
        ({"stop": [f"s{i}" for i in range(20_000)]}, "parameters.stop", "limit is 4"),
        ({"stop": ["s" * 257]}, "parameters.stop", "256"),
        ({"max_backtracks": 10**9}, "parameters.max_backtracks", "at most 64"),
        ({"max_backtrack_depth": 10**6}, "parameters.max_backtrack_depth", "at most 64"),
        ({"seed": -1}, "parameters.seed", "greater than or equal to 0"),
        ({"do_sample": True, "temperature": 1e-40}, "parameters.temperature", "at least"),
        ({"repetition_penalty": 1e-40}, "parameters.repetition_penalty", "must be in"),
        ({"top_p": 0.0}, "parameters.top_p", "(0, 1]"),
        ({"min_p": 1.5}, "parameters.min_p", "[0, 1]"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_generate_limits_are_422_naming_the_field(client, parameters, field, words, stream):
    body = {"inputs": PROMPT, "parameters": parameters, "stream": stream}
    assert words in refused(client.post("/generate", json=body), field)


@pytest.mark.parametrize(
    ("route", "extra", "field"),
    [
        ("/v1/completions", {"seed": -1}, "seed"),
        ("/v1/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"stop": "s" * 300}, "stop"),
        ("/v1/completions", {"temperature": -1e-40}, "temperature"),
        ("/v1/chat/completions", {"max_backtracks": 10**9}, "max_backtracks"),
        ("/v1/chat/completions", {"seed": -5}, "seed"),
    ],
)
def test_openai_limits_are_422_in_openai_shape(client, route, extra, field):
    if route == "/v1/completions":
        body = {"prompt": PROMPT, **extra}
    else:
        body = {"messages": [{"role": "user", "content": PROMPT}], **extra}
    refused(client.post(route, json=body), field)


def test_largest_seed_is_accepted(client):
    body = {"inputs": PROMPT, "parameters": {"seed": 2**64 - 1, "do_sample": True}}
    assert client.post("/generate", json=body).status_code == 200


def test_a_seed_beyond_64_bits_is_taken_modulo_2_64(client):
    def seed_used(seed: int) -> int:
        parameters = {"seed": seed, "do_sample": True, "details": True}
        answer = client.post("/generate", json={"inputs": PROMPT, "parameters": parameters})
        return answer.json()["details"]["seed"]

    assert seed_used(2**64 + 7) == seed_used(7) == 7


def test_openai_temperature_below_the_floor_is_greedy(client):
    body = {"prompt": PROMPT, "temperature": 1e-40, "max_tokens": 20}
    assert client.post("/v1/completions", json=body).json()["choices"][0]["text"] == "2 ok"


def test_a_long_prompt_is_refused_by_its_characters_before_tokenising(client):
    message = refused(client.post("/generate", json={"inputs": "x" * 70_000}), "inputs")
    assert "characters" in message and "max_input_chars" in message


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_413_before_it_is_parsed(client, chunked):
    body = b'{"inputs": "' + b"x" * 2_100_000 + b'"}'
    content = iter([body[i : i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    response = client.post(
        "/generate", content=content, headers={"content-type": "application/json"}
    )
    assert "max_request_bytes" in refused(response, "body", status=413)
    response = client.post(
        "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    refused(response, "body", status=413)


def test_info_shows_the_limits_and_the_model_id_only(client, scripted_checkpoint_dir):
    info = client.get("/info").json()
    assert info["max_stop_sequences"] == 4
    assert info["max_stop_sequence_chars"] == 256
    assert info["max_backtracks"] == 64
    assert info["max_backtrack_depth"] == 64
    assert info["max_input_chars"] == 65536
    assert info["max_request_bytes"] == 2_000_000
    assert info["health_stall_timeout"] > 0
    assert "model_path" not in info
    assert str(Path(scripted_checkpoint_dir).parent) not in client.get("/info").text


def test_openapi_schema_carries_the_limits(client):
    components = client.get("/openapi.json").json()["components"]["schemas"]

    def branch(model: str, field: str, kind: str) -> dict:
        prop = components[model]["properties"][field]
        return next(b for b in prop.get("anyOf", [prop]) if b.get("type") == kind)

    stop = branch("Parameters", "stop", "array")
    assert stop["maxItems"] == 4 and stop["items"]["maxLength"] == 256
    assert branch("Parameters", "max_backtracks", "integer")["maximum"] == 64
    assert branch("Parameters", "max_new_tokens", "integer")["maximum"] == 4000
    assert branch("CompletionRequest", "stop", "string")["maxLength"] == 256
    assert branch("CompletionRequest", "max_tokens", "integer")["maximum"] == 4000
    assert branch("GenerateRequest", "inputs", "string")["maxLength"] == 65536


@pytest.fixture(scope="module")
def strict_chat_server(tmp_path_factory) -> Iterator[ServerHandle]:
    """A `chat`-format checkpoint whose template refuses unknown and non-alternating roles."""
    directory = save_scripted_checkpoint(tmp_path_factory.mktemp("strict-chat"), SCRIPT)
    config = directory / "tokenizer_config.json"
    tokenizer_config = json.loads(config.read_text())
    tokenizer_config["chat_template"] = STRICT_TEMPLATE
    config.write_text(json.dumps(tokenizer_config))
    metadata = load_metadata(directory)
    metadata.prompt_format = "chat"
    save_metadata(directory, metadata)
    with running_server(directory) as handle:
        yield handle


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "1+1"}],
        [{"role": "user", "content": "1+1"}, {"role": "user", "content": "1+1"}],
    ],
)
def test_a_chat_template_that_raises_is_422_in_openai_shape(strict_chat_server, messages):
    response = httpx.post(
        f"{strict_chat_server.url}/v1/chat/completions", json={"messages": messages}, timeout=30
    )
    assert "chat template" in refused(response, "messages")


def test_the_strict_template_still_serves_a_valid_conversation(strict_chat_server):
    messages = [{"role": "user", "content": "1+1"}]
    response = httpx.post(
        f"{strict_chat_server.url}/v1/chat/completions", json={"messages": messages}, timeout=30
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "2 ok"
