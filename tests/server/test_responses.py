"""`POST /v1/responses` with the real openai SDK against the real server process.

The scripted checkpoint answers `1+1=` with `2 ok` after two backtracks (`tests/server/conftest`);
being a plain-format checkpoint, a conversation reaches it as its messages joined by newlines,
so what `instructions` and `input` become is visible in the answer and in `input_tokens`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.responses import Response

from backtrack.events import DoneEvent, TokenEvent
from backtrack.params import GenerationParams
from server.api.choices import Choices
from server.api.responses_protocol import ResponsesRequest
from server.api.responses_render import ResponsesRenderer
from tests.server.conftest import API_KEY, EXPECTED_REMOVED, EXPECTED_TEXT, MODEL_ID, PROMPT
from tests.server.sse import stream_events

STREAM_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING_ORDER = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def greedy(sdk: openai.OpenAI, **fields) -> Response:
    return sdk.responses.create(model=MODEL_ID, temperature=0, **fields)


def test_text_input_answers_a_response_the_sdk_reads(sdk, client):
    response = greedy(sdk, input=PROMPT)
    assert response.output_text == EXPECTED_TEXT
    assert response.id.startswith("resp_") and response.object == "response"
    assert (response.status, response.incomplete_details, response.model) == (
        "completed",
        None,
        MODEL_ID,
    )
    [message] = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert [part.type for part in message.content] == ["output_text"]
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (len(PROMPT), len(EXPECTED_TEXT))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert response.model_extra["backtracks"] == 2
    assert [token["text"] for token in response.model_extra["deleted_tokens"]] == EXPECTED_REMOVED
    raw = client.post("/v1/responses", json={"input": PROMPT, "temperature": 0}).json()
    Response.model_validate(raw)  # every field the SDK's model requires, of its type
    assert raw["store"] is False


def test_messages_follow_the_instructions_like_chat(sdk):
    instructions = "Add."  # placed after the input, the prompt would end on `.`: no answer
    messages = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": PROMPT}]}
    ]
    response = greedy(sdk, input=messages, instructions=instructions)
    chat = sdk.chat.completions.create(
        model=MODEL_ID,
        temperature=0,
        messages=[{"role": "system", "content": instructions}, {"role": "user", "content": PROMPT}],
    )
    assert response.output_text == chat.choices[0].message.content == EXPECTED_TEXT
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.input_tokens == len(instructions) + 1 + len(PROMPT)
    assert response.instructions == instructions


def test_an_earlier_answer_sent_back_is_part_of_the_conversation(sdk):
    first = greedy(sdk, input=PROMPT)
    follow_up = [
        {"role": "user", "content": PROMPT},
        *[item.model_dump() for item in first.output],  # the output item as the SDK holds it
        {"role": "user", "content": PROMPT},
    ]
    second = greedy(sdk, input=follow_up)
    assert second.usage.input_tokens == len(f"{PROMPT}\n{EXPECTED_TEXT}\n{PROMPT}")
    assert second.output_text == EXPECTED_TEXT


def test_max_output_tokens_cuts_the_answer_and_marks_it_incomplete(sdk):
    response = greedy(sdk, input=PROMPT, max_output_tokens=2)
    assert response.output_text == EXPECTED_TEXT[:2]
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert (response.usage.output_tokens, response.max_output_tokens) == (2, 2)


def test_stop_sequences_end_the_answer_as_on_chat(sdk, client):
    """`stop` is not in OpenAI's Responses API, but it is in this server's vocabulary on every
    other route: honoured here too (never silently ignored), within the same limits."""
    response = greedy(sdk, input=PROMPT, extra_body={"stop": ["o"]})
    assert response.output_text == EXPECTED_TEXT[: EXPECTED_TEXT.index("o")]
    assert response.status == "completed"
    too_many = client.post("/v1/responses", json={"input": PROMPT, "stop": list("abcdefghijk")})
    assert too_many.status_code == 422
    assert too_many.json()["error"]["param"] == "stop"


def sampled(sdk: openai.OpenAI, **fields) -> list[str]:
    """What five seeds sample at a hot temperature (BT is still decided untempered)."""
    return [
        sdk.responses.create(
            model=MODEL_ID, input=PROMPT, max_output_tokens=8, extra_body={"seed": seed}, **fields
        ).output_text
        for seed in range(5)
    ]


def test_temperature_and_top_p_shape_the_sampling(sdk):
    hot = sampled(sdk, temperature=5.0)
    assert set(hot) != {EXPECTED_TEXT}
    assert sampled(sdk, temperature=5.0) == hot  # the seed makes it reproducible
    assert set(sampled(sdk, temperature=5.0, top_p=0.01)) == {EXPECTED_TEXT}
    echoed = sdk.responses.create(model=MODEL_ID, input=PROMPT, temperature=5.0, top_p=0.01)
    assert (echoed.temperature, echoed.top_p) == (5.0, 0.01)


def test_stream_sends_the_typed_events_in_order_and_replays_the_answer(sdk):
    plain = greedy(sdk, input=PROMPT)
    with greedy(sdk, input=PROMPT, stream=True) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert kinds == [*STREAM_ORDER, *[d.type for d in deltas], *CLOSING_ORDER, "response.completed"]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(delta.delta for delta in deltas) == plain.output_text
    assert all(delta.delta for delta in deltas)  # nothing later deleted was ever sent
    assert events[-4].text == events[-3].part.text == plain.output_text
    final = events[-1].response
    assert final.output_text == plain.output_text and final.status == "completed"
    assert final.model_extra["backtracks"] == 2
    assert final.usage.output_tokens == plain.usage.output_tokens
    assert events[0].response.id == final.id and events[0].response.status == "in_progress"


def test_the_sdks_stream_helper_assembles_the_final_response(sdk):
    with sdk.responses.stream(model=MODEL_ID, input=PROMPT, temperature=0) as stream:
        final = stream.get_final_response()
    assert final.output_text == EXPECTED_TEXT


def test_each_event_is_named_by_its_type(client):
    events = stream_events(client, "/v1/responses", {"input": PROMPT, "stream": True})
    assert all(event.event == event.json()["type"] for event in events)


def test_a_cut_stream_ends_with_response_incomplete(sdk):
    with greedy(sdk, input=PROMPT, stream=True, max_output_tokens=2) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"


def test_a_live_stream_marks_deletions_on_empty_deltas(sdk):
    with greedy(
        sdk, input=PROMPT, stream=True, extra_body={"hold_back_deletable": False}
    ) as stream:
        deltas = [event for event in stream if event.type == "response.output_text.delta"]
    removed = [d.model_extra["backtrack"]["removed_text"] for d in deltas if not d.delta]
    assert removed == EXPECTED_REMOVED


UNSUPPORTED = [
    ("tools", [{"type": "function", "name": "add", "parameters": {}}]),
    ("tool_choice", "required"),
    ("max_tool_calls", 3),
    ("previous_response_id", "resp_123"),
    ("conversation", "conv_123"),
    ("prompt", {"id": "pmpt_123"}),
    ("context_management", [{"type": "compaction"}]),
    ("include", ["message.output_text.logprobs"]),
    ("reasoning", {"effort": "low"}),
    ("text", {"format": {"type": "json_schema", "name": "sum", "schema": {}}}),
    ("text", {"verbosity": "low"}),
    ("top_logprobs", 3),
    ("background", True),
    ("background_options", {"completion_window": "2h"}),
    ("truncation", "auto"),
    ("service_tier", "flex"),
    ("prompt_cache_retention", "24h"),
    ("prompt_cache_options", {"mode": "explicit", "ttl": "30m"}),
    ("image", {"context_compression": "enabled"}),
    ("moderation", {"model": "omni-moderation-latest"}),
    ("access_programs", {"cyber": "standard"}),
]


@pytest.mark.parametrize(("field", "value"), UNSUPPORTED)
def test_what_this_server_cannot_honour_is_refused_by_name(sdk, field, value):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.responses.create(model=MODEL_ID, input=PROMPT, **{field: value})
    error = raised.value.body
    assert error["param"] == field
    assert error["message"].startswith(f"{field}: not supported: ")


def test_obfuscation_is_refused_by_name(sdk):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.responses.create(
            model=MODEL_ID, input=PROMPT, stream=True, stream_options={"include_obfuscation": True}
        )
    assert raised.value.body["param"] == "stream_options"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (
            {"type": "input_image", "image_url": "https://example.com/a.png"},
            "input.0.content.0.type",
        ),
        ({"type": "input_file", "file_id": "file_123"}, "input.0.content.0.type"),
    ],
)
def test_images_and_files_are_refused_by_name(sdk, part, param):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.responses.create(model=MODEL_ID, input=[{"role": "user", "content": [part]}])
    assert raised.value.body["param"] == param
    assert f"{part['type']} content is not supported" in raised.value.body["message"]


def test_tool_items_are_refused_by_name(sdk):
    item = {"type": "function_call_output", "call_id": "call_1", "output": "2"}
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        sdk.responses.create(model=MODEL_ID, input=[item])
    assert raised.value.body["param"] == "input.0.type"
    assert "function_call_output items are not supported" in raised.value.body["message"]


def test_an_unknown_model_is_404(sdk):
    with pytest.raises(openai.NotFoundError) as raised:
        sdk.responses.create(model="gpt-4o", input=PROMPT)
    assert raised.value.body["param"] == "model"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 422, "input"),
        ({"input": 5}, 422, "input"),
        ({"input": ""}, 422, "input"),
        ({"input": []}, 422, "input"),
        ({"input": [{"role": "user"}]}, 422, "input.0.content"),
        ({"input": [{"role": "user", "content": ""}]}, 422, "input.0.content"),
        ({"input": [{"role": "user", "content": 5}]}, 422, "input.0.content"),
        ({"input": [{"role": "tool", "content": PROMPT}]}, 422, "input.0.role"),
        ({"input": "x" * 65}, 422, "input"),  # over the server's 64 input tokens
        ({"input": PROMPT, "instructions": "x" * 64}, 422, "input"),
        ({"input": PROMPT, "max_output_tokens": 0}, 422, "max_output_tokens"),
        ({"input": PROMPT, "max_output_tokens": 4001}, 422, "max_output_tokens"),
        ({"input": PROMPT, "temperature": -1}, 422, "temperature"),
        ({"input": PROMPT, "top_p": 2}, 422, "top_p"),
        ({"input": PROMPT, "stream": "yes"}, 422, "stream"),
        ({"input": PROMPT, "metadata": {str(n): "" for n in range(17)}}, 422, "metadata"),
        (
            {"input": PROMPT, "stream_options": {"include_obfuscation": False}},
            400,
            "stream_options",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(client, body, status, param):
    response = client.post("/v1/responses", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert param in error["message"]


def test_metadata_and_store_are_answered(sdk):
    response = sdk.responses.create(
        model=MODEL_ID, input=PROMPT, metadata={"run": "7"}, store=True, user="u1"
    )
    assert response.metadata == {"run": "7"}
    assert response.model_extra["store"] is False  # accepted; nothing is stored
    assert response.user == "u1"


def test_the_route_is_in_the_openapi_schema_with_this_servers_limits(client, server):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/responses"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    assert request["$ref"].endswith("/ResponsesRequest")
    answer = operation["responses"]["200"]["content"]
    assert answer["application/json"]["schema"]["$ref"].endswith("/ResponseObject")
    assert "text/event-stream" in answer
    fields = schema["components"]["schemas"]["ResponsesRequest"]["properties"]
    info = client.get("/info").json()
    maxima = [branch.get("maximum") for branch in fields["max_output_tokens"]["anyOf"]]
    assert info["max_new_tokens"] in maxima
    text = next(branch for branch in fields["input"]["oneOf"] if branch["type"] == "string")
    assert text["maxLength"] == info["max_input_chars"]
    assert [MODEL_ID] in [branch.get("enum") for branch in fields["model"]["anyOf"]]


class FailingStream:
    """A generation that writes one token and then fails, as the engine reports it."""

    done: DoneEvent | None = None

    def cancel(self) -> None: ...

    async def __aiter__(self):
        yield TokenEvent(0, 17, "2", -0.1)
        self.done = DoneEvent("2", "error", 1, 0)
        yield self.done


def test_a_failed_generation_ends_with_an_event_the_sdk_raises_on():
    body = ResponsesRequest(input=PROMPT, stream=True)
    render = ResponsesRenderer(MODEL_ID, body, GenerationParams(), len(PROMPT))

    async def frames() -> bytes:
        choices = Choices([FailingStream()], [len(PROMPT)])  # type: ignore[list-item]
        return b"".join([frame.encode() async for frame in render.frames(choices)])

    written = asyncio.run(frames())
    answer = httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=written, headers={"content-type": "text/event-stream"}
        )
    )
    sdk = openai.OpenAI(
        base_url="http://server/v1", api_key="k", http_client=httpx.Client(transport=answer)
    )
    seen = []
    with pytest.raises(openai.APIError) as raised:
        for event in sdk.responses.create(model=MODEL_ID, input=PROMPT, stream=True):
            seen.append(event)
    assert seen[-1].type == "response.failed"
    assert seen[-1].response.status == "failed"
    assert seen[-1].response.error.code == "server_error"
    assert "generation failed" in raised.value.message
