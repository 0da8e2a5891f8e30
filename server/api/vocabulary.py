"""The request vocabulary on the wire: request fields derived from `GenerationParams`, and the
translation of a request's values back into it within this server's caps.

The generation parameters are not spelled out in the protocols: TGI's `Parameters` and OpenAI's
options derive them from the vocabulary (`backtrack.params.GenerationParams`, via
`request_fields`) and hand every one they were given back to it (`vocabulary_values`,
`build_params`). Types are checked by pydantic (422 naming the field); ranges by
`GenerationParams` itself (`InvalidParameter`, also 422 naming the field); the caps of this
server by `server.limits`. The order "request value -> server default -> vocabulary default" is
written once, in `build_params`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from backtrack.params import MAX_SEED, GenerationParams, InvalidParameter
from server.limits import CAPPED_PARAMETERS, Limits

VOCABULARY = frozenset(GenerationParams.model_fields)
STRICT = ConfigDict(strict=True)
"""Types as the schema states them: `"true"` is no boolean and `"3"` no integer (pydantic's
lax mode would take both); an integral number such as 3.0 is an integer, as in JSON Schema."""


def _integral(value: Any) -> Any:
    """3.0 -> 3, inside lists too (JSON Schema's integers include integral floats)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**70:
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _takes_int(annotation: Any) -> bool:
    text = str(annotation)
    return "int" in text and "float" not in text


class StrictRequest(BaseModel):
    """Base of every request model: strict types, integral floats taken as integers."""

    model_config = STRICT

    @field_validator("*", mode="before")
    @classmethod
    def _integral_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _takes_int(field.annotation):
            return _integral(value)
        return value


StopText = Annotated[str, Field(min_length=1)]


def request_fields(
    exclude: frozenset[str] = frozenset(), model: type[GenerationParams] = GenerationParams
) -> dict[str, Any]:
    """Every parameter of the vocabulary, optional (None = this server's default), with its
    type, docstring and range, so the OpenAPI schema states every bound the server enforces
    (field definitions for `pydantic.create_model`)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        annotation: Any = info.annotation
        if name == "stop":
            annotation = list[StopText]
        elif name == "seed":  # any size, taken modulo 2**64 (build_params)
            annotation = Annotated[int, Field(ge=0)]
        elif info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        fields[name] = (annotation | None, Field(None, description=info.description))
    return fields


def _bool_only(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("Input should be a valid boolean")
    return value


Off = Annotated[Literal[False], BeforeValidator(_bool_only)]
"""A flag accepted only off (false; 0 is no boolean)."""
Neutral: Any = Field(None, ge=0, le=0)
"""A number this server accepts only at its neutral value 0 (the schema says so)."""
One: Any = Field(None, ge=1, le=1)
"""A number accepted only at its neutral value 1."""


def vocabulary_values(body: BaseModel) -> dict[str, Any]:
    """The generation parameters a request set; unset ones (None) take this server's default."""
    names = set(VOCABULARY & set(type(body).model_fields))
    return body.model_dump(include=names, exclude_none=True)


def build_params(
    limits: Limits,
    values: dict[str, Any],
    *,
    field_prefix: str,
    max_tokens_name: str = "max_new_tokens",
) -> GenerationParams:
    """GenerationParams from request fields; InvalidParameter names the request's own field."""
    values = dict(values)
    max_new_tokens = values.pop("max_new_tokens", None)
    if max_new_tokens is None:
        max_new_tokens = min(limits.default_max_new_tokens, limits.max_new_tokens)
    _at_most(f"{field_prefix}{max_tokens_name}", max_new_tokens, limits.max_new_tokens)
    values["stop"] = list(values.get("stop") or [])
    check_stop(values["stop"], limits, f"{field_prefix}stop")
    values.update(capped_values(values, limits, field_prefix))
    if values.get("seed") is not None:
        # Taken modulo 2**64 (the sampler's range), so the schema needs no maximum: JSON tools
        # that read numbers as doubles cannot tell 2**64 - 1 from 2**64.
        values["seed"] %= MAX_SEED + 1
    try:
        return GenerationParams(max_new_tokens=max_new_tokens, **values)
    except InvalidParameter as error:
        message = str(error).removeprefix(error.field).strip()
        name = max_tokens_name if error.field == "max_new_tokens" else error.field
        raise InvalidParameter(f"{field_prefix}{name}", message) from None


def _at_most(field: str, value: int, limit: int) -> None:
    if value > limit:
        raise InvalidParameter(field, f"must be at most {limit} (got {value})")


def check_stop(stop: list[str], limits: Limits, field: str) -> None:
    """Stop sequences are matched at every step for every row: their number and length cost
    the whole batch, so both are capped (TGI's and OpenAI's limit is 4 sequences)."""
    if len(stop) > limits.max_stop_sequences:
        raise InvalidParameter(
            field, f"has {len(stop)} sequences; the limit is {limits.max_stop_sequences}"
        )
    longest = max(map(len, stop), default=0)
    if longest > limits.max_stop_sequence_chars:
        raise InvalidParameter(
            field,
            f"has a sequence of {longest} characters; "
            f"the limit is {limits.max_stop_sequence_chars}",
        )


def capped_values(values: dict[str, Any], limits: Limits, prefix: str) -> dict[str, Any]:
    """The capped backtrack options within this server's caps; unset ones default to at most
    the server's cap, so a lowered cap never refuses a request that did not ask."""
    capped: dict[str, Any] = {}
    for name in CAPPED_PARAMETERS:
        cap = limits.cap(name)
        if name in values:
            _at_most(f"{prefix}{name}", values[name], cap)
            capped[name] = values[name]
        else:
            capped[name] = min(GenerationParams.model_fields[name].get_default(), cap)
    return capped
