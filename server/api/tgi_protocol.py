"""TGI's request body (`POST /generate`, `/generate_stream`, `/`) and its GenerationParams.

`Parameters` is the vocabulary (`server.api.vocabulary`) in TGI's names, plus TGI's own options;
those TGI's clients send with every request are accepted only at their neutral values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field, create_model

from backtrack.params import GenerationParams
from server.api.vocabulary import (
    Neutral,
    Off,
    One,
    StrictRequest,
    build_params,
    request_fields,
    vocabulary_values,
)
from server.limits import Limits


class _TgiBase(StrictRequest):
    model_config = ConfigDict(extra="forbid", strict=True)


if TYPE_CHECKING:  # the checker sees the base; the fields are made from the vocabulary below
    TgiVocabulary = _TgiBase
else:
    TgiVocabulary = create_model("TgiVocabulary", __base__=_TgiBase, **request_fields())
    """Every generation parameter, optional, as TGI's `parameters` object names it."""


class Parameters(TgiVocabulary):
    """TGI's parameter names plus the backtrack ones (all from `GenerationParams`)."""

    details: bool = False
    hold_back_deletable: bool | None = None
    """Never stream a token a later backtrack could delete (default: off on /generate, on for TGI)."""
    truncate: int | None = Field(None, ge=1)
    """Keep only the last `truncate` prompt tokens (TGI's meaning)."""
    # TGI's clients send these with every request; only their neutral values are accepted.
    return_full_text: Off | None = None
    decoder_input_details: Off = False
    watermark: Off = False
    typical_p: float | None = One
    best_of: int | None = One
    top_n_tokens: int | None = Neutral
    frequency_penalty: float | None = Neutral
    grammar: None = None
    adapter_id: None = None


class GenerateRequest(StrictRequest):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: str = Field(min_length=1)
    parameters: Parameters = Field(default_factory=lambda: Parameters())
    stream: bool = False


def tgi_params(parameters: Parameters, limits: Limits) -> GenerationParams:
    """TGI's rule: sampling when `do_sample` or any warper is set (temperature other than 1,
    top_k, top_p below 1), as its NextTokenChooser decides (`do_sample or has_warpers`)."""
    values = vocabulary_values(parameters)
    temperature, top_p = values.get("temperature"), values.get("top_p")
    warped = (
        (temperature is not None and temperature != 1.0)
        or values.get("top_k") is not None
        or (top_p is not None and top_p < 1.0)
    )
    if warped:
        values["do_sample"] = True
    return build_params(limits, values, field_prefix="parameters.")
