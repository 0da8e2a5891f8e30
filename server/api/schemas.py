"""Request bodies of every endpoint (pydantic), and their translation into GenerationParams.

The generation parameters are not spelled out here: TGI's `Parameters` and OpenAI's options
derive them from the vocabulary (`backtrack.params.GenerationParams`, via `request_fields`) and
hand every one they were given back to it (`vocabulary_values`). What stays here is each
protocol's own shape (OpenAI's `max_tokens`, temperature 0 as greedy, options only accepted off).
Types are checked by pydantic (422 naming the field); ranges by `GenerationParams` itself
(`InvalidParameter`, also 422 naming the field); limits of this server by `Limits`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from backtrack.params import GenerationParams, InvalidParameter, request_fields
from server.service import Limits


def _off(value: Any) -> Any:
    """Refuse (422 naming the field) an option this server accepts only when it is off."""
    if value is True or value not in (None, False, 0, {}, []):
        raise ValueError("is not supported by this server (leave it unset)")
    return value


def _one(value: Any) -> Any:
    """Like `_off`, for options whose neutral value is 1 (best_of, typical_p)."""
    if value is not None and (value is True or value != 1):
        raise ValueError("is not supported by this server (leave it unset or 1)")
    return value


VOCABULARY = frozenset(GenerationParams.model_fields)

TgiVocabulary = create_model(
    "TgiVocabulary", __config__=ConfigDict(extra="forbid"), **request_fields()
)
"""Every generation parameter, optional, as TGI's `parameters` object names it."""
OpenAIVocabulary = create_model(
    "OpenAIVocabulary",
    **request_fields(exclude=frozenset({"max_new_tokens", "do_sample", "stop"})),
)
"""The vocabulary in OpenAI's shape: `max_tokens`, `stop` as a string or list, and
temperature 0 meaning greedy (so no `do_sample`); defined by the request classes below."""


class Parameters(TgiVocabulary):
    """TGI's parameter names plus the backtrack ones (all from `GenerationParams`)."""

    details: bool = False
    hold_back_deletable: bool | None = None
    """Never stream a token a later backtrack could delete (default: off on /generate, on for TGI)."""
    # TGI's clients send these with every request; only their neutral values are accepted.
    return_full_text: bool | None = None
    decoder_input_details: bool = False
    truncate: int | None = None
    watermark: bool = False
    typical_p: float | None = None
    best_of: int | None = None
    top_n_tokens: int | None = None
    frequency_penalty: float | None = None
    grammar: Any = None
    adapter_id: str | None = None

    _check_off = field_validator(
        "return_full_text",
        "decoder_input_details",
        "truncate",
        "watermark",
        "top_n_tokens",
        "frequency_penalty",
        "grammar",
        "adapter_id",
    )(_off)
    _check_one = field_validator("typical_p", "best_of")(_one)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIOptions(OpenAIVocabulary):
    """Fields shared by /v1/completions and /v1/chat/completions (unknown ones are ignored);
    `ignore_eos` and `min_tokens` are vLLM's extensions, the rest of the vocabulary ours."""

    model: str | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    hold_back_deletable: bool = True
    """Default on: OpenAI clients cannot erase, so a streamed token is never one later deleted."""
    user: str | None = None
    # Parts of OpenAI's API this server does not implement: only their neutral values pass.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: Any = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    _check_off = field_validator(
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "echo",
        "suffix",
        "tools",
        "response_format",
    )(_off)
    _check_one = field_validator("best_of")(_one)


class CompletionRequest(OpenAIOptions):
    prompt: str | list[str]
    max_tokens: int | None = 16


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(OpenAIOptions):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


def vocabulary_values(body: BaseModel) -> dict[str, Any]:
    """The generation parameters a request set; unset ones (None) take this server's default."""
    names = VOCABULARY & set(type(body).model_fields)
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
    caps = {
        "max_backtracks": limits.max_backtracks,
        "max_backtrack_depth": limits.max_backtrack_depth,
    }
    capped: dict[str, Any] = {}
    for name, cap in caps.items():
        if name in values:
            _at_most(f"{prefix}{name}", values[name], cap)
            capped[name] = values[name]
        else:
            capped[name] = min(GenerationParams.model_fields[name].get_default(), cap)
    return capped


def tgi_params(parameters: Parameters, limits: Limits) -> GenerationParams:
    return build_params(limits, vocabulary_values(parameters), field_prefix="parameters.")


def openai_params(
    body: CompletionRequest | ChatCompletionRequest, limits: Limits
) -> GenerationParams:
    """OpenAI semantics: sampling unless temperature is 0 (which means greedy)."""
    if body.n != 1:
        raise InvalidParameter("n", "must be 1 (one choice per request)")
    values = vocabulary_values(body)
    greedy = body.temperature == 0
    if greedy:
        values.pop("temperature")
    values["do_sample"] = not greedy
    values["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    max_tokens, name = body.max_tokens, "max_tokens"
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        max_tokens, name = body.max_completion_tokens, "max_completion_tokens"
    if max_tokens is not None:
        values["max_new_tokens"] = max_tokens
    return build_params(limits, values, field_prefix="", max_tokens_name=name)


def apply_limits(schema: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Write this server's limits into the OpenAPI schema (maxItems, maxLength, maximum), so
    clients can read them from `/openapi.json` as well as from `/info`."""
    bounds = {
        "stop": {
            "maxItems": limits.max_stop_sequences,
            "maxLength": limits.max_stop_sequence_chars,
        },
        "max_backtracks": {"maximum": limits.max_backtracks},
        "max_backtrack_depth": {"maximum": limits.max_backtrack_depth},
        "max_new_tokens": {"maximum": limits.max_new_tokens},
        "max_tokens": {"maximum": limits.max_new_tokens},
        "max_completion_tokens": {"maximum": limits.max_new_tokens},
        "inputs": {"maxLength": limits.max_input_chars},
        "prompt": {"maxLength": limits.max_input_chars},
    }
    for component in schema.get("components", {}).get("schemas", {}).values():
        for name, prop in component.get("properties", {}).items():
            if name in bounds:
                _bound(prop, bounds[name])
    return schema


def _bound(prop: dict[str, Any], bounds: dict[str, int]) -> None:
    """Put each bound on the branch of the property's type it applies to."""
    for branch in prop.get("anyOf", [prop]):
        kind = branch.get("type")
        if kind == "array":
            if "maxItems" in bounds:
                branch["maxItems"] = bounds["maxItems"]
            if "maxLength" in bounds:
                branch.setdefault("items", {})["maxLength"] = bounds["maxLength"]
        elif kind == "string" and "maxLength" in bounds:
            branch["maxLength"] = bounds["maxLength"]
        elif kind == "integer" and "maximum" in bounds:
            branch["maximum"] = bounds["maximum"]
