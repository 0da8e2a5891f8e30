"""One table of caps (`server.limits.CAPS`): the settings, `/info`, the request translation and
the OpenAPI bounds all read it, so a cap changed in the settings changes all four."""

from __future__ import annotations

import pytest

from backtrack.params import InvalidParameter
from server.api.openapi_schema import apply_limits
from server.api.tgi_protocol import Parameters, tgi_params
from server.limits import CAPS, Limits
from server.settings import Settings


def test_every_cap_is_a_setting_with_the_tables_default_and_minimum():
    for name, cap in CAPS.items():
        field = Settings.model_fields[name]
        assert field.default == cap.default and field.description == cap.description
        with pytest.raises(ValueError, match=name):
            Settings(**{name: cap.minimum - 1})


def test_a_cap_set_in_the_settings_reaches_info_validation_and_the_schema():
    limits = Limits.from_settings(Settings(max_backtracks=5, max_stop_sequences=2))
    assert limits.published()["max_backtracks"] == 5
    assert limits.parameter_maxima()["max_backtracks"] == 5
    with pytest.raises(InvalidParameter, match=r"parameters\.max_backtracks"):
        tgi_params(Parameters(max_backtracks=6), limits)
    schema = {"components": {"schemas": {"P": {"properties": {"stop": {"type": "array"}}}}}}
    stop = apply_limits(schema, limits)["components"]["schemas"]["P"]["properties"]["stop"]
    assert stop == {"type": "array", "maxItems": 2, "items": {"maxLength": 256}}


def test_the_published_input_limit_is_the_one_in_effect_once_the_model_is_known():
    assert Limits(max_input_tokens=100).published()["max_input_tokens"] == 100
    assert Limits(max_input_tokens=100, max_prompt_tokens=63).published()["max_input_tokens"] == 63
