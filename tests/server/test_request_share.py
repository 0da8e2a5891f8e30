"""One request may take at most `max_request_share` of the places (decoding slots + queue):
a request asking for more choices (prompts x n) is refused by name before any work, so other
clients always find a place; every 429 names the limits that were reached."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from server.process import ServerHandle, running_server
from tests.server.conftest import LOOP_PROMPT, MODEL_ID, PROMPT
from tests.server.test_faults import idle, wait_for

PLACES = {"max_concurrent_requests": 2, "max_queue_size": 2}
"""Four places; at the default share (0.5) one request may take two of them."""
LOOPING = {"prompt": LOOP_PROMPT, "max_tokens": 4000, "stream": True}


@pytest.fixture(scope="module")
def four_places(scripted_checkpoint_dir) -> Iterator[ServerHandle]:
    with running_server(
        scripted_checkpoint_dir, max_new_tokens=4000, model_id=MODEL_ID, **PLACES
    ) as handle:
        yield handle


def test_the_cap_is_published_in_info_and_on_n_in_the_schema(four_places):
    info = httpx.get(f"{four_places.url}/info").json()
    assert info["max_request_share"] == 0.5
    assert info["max_choices_per_request"] == 2
    components = httpx.get(f"{four_places.url}/openapi.json").json()["components"]["schemas"]
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        assert components[name]["properties"]["n"]["maximum"] == 2


def test_a_request_asking_for_every_place_is_refused_by_name_and_others_are_served(four_places):
    """On a first-come basis n 4 would take all four places and shut every other client out."""
    client = openai.OpenAI(base_url=f"{four_places.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.completions.create(model="scripted", prompt=LOOP_PROMPT, n=4, max_tokens=4000)
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "n"
    assert "max_choices_per_request" in error["message"] and "2" in error["message"]
    with pytest.raises(openai.UnprocessableEntityError):  # prompts x n count: 2 x 2 is 4 too
        client.completions.create(model="scripted", prompt=[PROMPT, PROMPT], n=2, max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": PROMPT}], n=3, max_tokens=4
        )
    assert idle(four_places.url)  # refused before any work
    answer = client.completions.create(model="scripted", prompt=PROMPT, n=2, max_tokens=16)
    assert [choice.text for choice in answer.choices] == ["2 ok", "2 ok"]


def test_every_429_names_the_limits_reached(four_places):
    """Two requests of two choices each take the four places; the next is told which limits."""
    with httpx.Client(base_url=four_places.url, timeout=30) as client:
        with (
            client.stream("POST", "/v1/completions", json={**LOOPING, "n": 2}) as first,
            client.stream("POST", "/v1/completions", json={**LOOPING, "n": 2}) as second,
        ):
            assert first.status_code == second.status_code == 200  # both admitted
            tgi = client.post("/generate", json={"inputs": PROMPT})
            completion = client.post("/v1/completions", json={"prompt": PROMPT})
        assert tgi.status_code == completion.status_code == 429
        for message in (tgi.json()["error"], completion.json()["error"]["message"]):
            assert "max_concurrent_requests 2" in message
            assert "max_queue_size 2" in message
        wait_for(lambda: idle(four_places.url))
