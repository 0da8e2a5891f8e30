from __future__ import annotations

import pytest

from backtrack.params import GenerationParams, InvalidParameter


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
