"""The request models derive from the vocabulary and hand every parameter on to it."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError, create_model

from backtrack.params import GenerationParams, InvalidParameter, describe, rule_text
from server.api.admin import parameters as info_parameters
from server.api.errors import validation_error
from server.api.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIOptions,
    openai_params,
)
from server.api.tgi_protocol import GenerateRequest, Parameters, tgi_params
from server.api.vocabulary import StrictRequest, request_fields
from server.limits import Limits

LIMITS = Limits(max_input_tokens=100, max_new_tokens=50, default_max_new_tokens=20)


def not_default(entry: dict[str, Any]) -> Any:
    """A valid value for the parameter that differs from its default."""
    if entry["type"] == "boolean":
        return not entry["default"]
    if "choices" in entry:
        return entry["choices"][-1]
    if entry["type"] == "array":
        return ["\n\n"]
    return 3 if entry["type"] == "integer" else 0.5


VALUES = {entry["name"]: not_default(entry) for entry in describe()}


def test_tgi_parameters_carry_every_parameter_of_the_vocabulary():
    assert set(GenerationParams.model_fields) <= set(Parameters.model_fields)
    params = tgi_params(Parameters(**VALUES), LIMITS)
    assert params.model_dump() == VALUES


def test_openai_options_carry_every_parameter_in_openais_shape():
    openai_names = set(GenerationParams.model_fields) - {"max_new_tokens", "do_sample", "stop"}
    assert openai_names <= set(OpenAIOptions.model_fields)
    given = {name: value for name, value in VALUES.items() if name in openai_names}
    body = CompletionRequest(prompt="x", max_tokens=3, stop="\n\n", **given)
    assert openai_params(body, LIMITS).model_dump() == {**VALUES, "do_sample": True}
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], temperature=0)
    greedy = openai_params(chat, LIMITS)
    assert (greedy.do_sample, greedy.temperature) == (False, 1.0)


def test_unset_parameters_take_the_servers_defaults_within_its_caps():
    low = Limits(max_input_tokens=100, max_new_tokens=50, default_max_new_tokens=20)
    params = tgi_params(Parameters(), low)
    assert params.max_new_tokens == 20
    assert params.model_dump(exclude={"max_new_tokens"}) == GenerationParams().model_dump(
        exclude={"max_new_tokens"}
    )


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"top_p": 0}, "parameters.top_p"),
        ({"max_new_tokens": 51}, "parameters.max_new_tokens"),
        ({"stop": [""]}, "parameters.stop"),
    ],
)
def test_a_range_error_names_the_requests_field(given, field):
    """A range the schema states is refused by the request model, worded by the vocabulary;
    the server's own limits (max_new_tokens here) by `tgi_params`."""
    try:
        body = GenerateRequest(inputs="x", parameters=given)
    except ValidationError as invalid:
        refusal = validation_error(RequestValidationError(invalid.errors()))
        assert (refusal.status, refusal.field) == (422, field)
        rule = rule_text(GenerationParams.model_fields[field.split(".")[-1]])
        assert refusal.message == f"{field} {rule}"
        return
    with pytest.raises(InvalidParameter) as error:
        tgi_params(body.parameters, LIMITS)
    assert error.value.field == field


def test_info_describes_the_vocabulary_with_this_servers_caps():
    described = {entry["name"]: entry for entry in info_parameters(LIMITS)}
    assert list(described) == list(GenerationParams.model_fields)
    assert described["max_new_tokens"]["maximum"] == 50
    assert described["max_new_tokens"]["default"] == 20
    assert described["max_backtracks"]["maximum"] == LIMITS.max_backtracks
    assert described["mode"]["choices"] == ["rewind", "keep"]


class Extended(GenerationParams):
    knob: int = Field(3, ge=0, le=9)
    """A parameter a newcomer adds: one field, nothing else."""


def test_a_field_added_to_the_vocabulary_becomes_an_optional_request_field_with_its_range():
    fields = request_fields(model=Extended)
    Request = create_model("Request", __base__=StrictRequest, **fields)
    assert Request().model_dump()["knob"] is None  # unset: this server's default
    assert Request(knob=9).model_dump()["knob"] == 9
    with pytest.raises(ValidationError):
        Request(knob=10)
    schema = Request.model_json_schema()["properties"]["knob"]
    assert schema["description"] == "A parameter a newcomer adds: one field, nothing else."
