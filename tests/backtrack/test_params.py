from __future__ import annotations

import argparse
import math

import pytest
from pydantic import Field

from backtrack.params import (
    MODES,
    POLICIES,
    GenerationParams,
    InvalidParameter,
    describe,
    rule_text,
)
from clients.viewer import add_parameter_flags


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("temperature", 0.0),
        ("top_k", 0),
        ("top_p", 1.5),
        ("min_p", -0.1),
        ("repetition_penalty", 0.0),
        ("max_backtracks", -1),
        ("max_backtrack_depth", 0),
        ("mode", "undo"),
        ("backtrack_policy", "always"),
        ("backtrack_threshold", 1.0),
        ("stop", [""]),
    ],
)
def test_invalid_values_name_their_field(field, value):
    with pytest.raises(InvalidParameter) as error:
        GenerationParams(**{field: value})
    assert error.value.field == field
    assert str(error.value).startswith(field)


def test_defaults_are_valid_and_decide_backtracks_on_the_argmax():
    params = GenerationParams()
    assert params.mode == "rewind"
    assert params.backtrack_policy == "argmax"


def test_every_parameter_is_documented_and_described_with_its_range():
    described = {entry["name"]: entry for entry in describe()}
    assert list(described) == list(GenerationParams.model_fields)
    assert all(entry["description"] for entry in described.values())
    assert described["top_p"] == {
        "name": "top_p",
        "type": "number",
        "nullable": True,
        "default": None,
        "description": GenerationParams.model_fields["top_p"].description,
        "exclusiveMinimum": 0,
        "maximum": 1,
    }
    assert described["mode"]["choices"] == list(MODES) == ["rewind", "keep"]
    assert described["backtrack_policy"]["choices"] == list(POLICIES)
    assert described["stop"]["type"] == "array" and described["stop"]["default"] == []


def test_error_messages_are_worded_from_the_declared_ranges():
    assert rule_text(GenerationParams.model_fields["top_p"]) == "must be in (0, 1]"
    with pytest.raises(InvalidParameter, match=r"^seed must be in \[0, 18446744073709551615\]"):
        GenerationParams(seed=2**64)
    with pytest.raises(InvalidParameter, match=r"^temperature must be at least 0.01"):
        GenerationParams(temperature=math.inf)
    with pytest.raises(InvalidParameter, match=r"^top_k input should be a valid integer"):
        GenerationParams(top_k=2.7)  # never silently 2
    with pytest.raises(InvalidParameter, match=r"^stop stop sequences must not be empty"):
        GenerationParams(stop=["a", ""])


class Extended(GenerationParams):
    knob: int = Field(3, ge=0, le=9)
    """A parameter a newcomer adds: one field, nothing else."""


def test_a_field_added_to_the_vocabulary_appears_in_every_derived_place():
    entry = next(entry for entry in describe(Extended) if entry["name"] == "knob")
    assert entry["minimum"] == 0 and entry["maximum"] == 9 and entry["default"] == 3
    assert entry["description"] == "A parameter a newcomer adds: one field, nothing else."
    with pytest.raises(InvalidParameter, match=r"^knob must be in \[0, 9\]"):
        Extended(knob=10)

    parser = argparse.ArgumentParser()
    names = add_parameter_flags(parser, describe(Extended))
    assert names == list(Extended.model_fields)
    args = parser.parse_args(["--knob", "5", "--mode", "keep", "--no-do-sample", "--stop", "x"])
    assert (args.knob, args.mode, args.do_sample, args.stop) == (5, "keep", False, ["x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--backtrack-policy", "always"])
