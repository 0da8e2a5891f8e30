"""Request bodies of every endpoint (pydantic), and their translation into GenerationParams.

The generation parameters are not spelled out here: TGI's `Parameters` and OpenAI's options
derive them from the vocabulary (`backtrack.params.GenerationParams`, via `request_fields`) and
hand every one they were given back to it (`vocabulary_values`). What stays here is each
protocol's own shape (OpenAI's `max_tokens`, temperature 0 as greedy, options only accepted off).
Types are checked by pydantic (422 naming the field); ranges by `GenerationParams` itself
(`InvalidParameter`, also 422 naming the field); limits of this server by `Limits`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from backtrack.params import MAX_SEED, MIN_TEMPERATURE, GenerationParams, InvalidParameter
from server.service import Limits

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


def request_fields(exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Every parameter of the vocabulary, optional (None = this server's default), with its
    type, docstring and range, so the OpenAPI schema states every bound the server enforces."""
    fields: dict[str, Any] = {}
    for name, info in GenerationParams.model_fields.items():
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


class _TgiBase(StrictRequest):
    model_config = ConfigDict(extra="forbid", strict=True)


TgiVocabulary = create_model("TgiVocabulary", __base__=_TgiBase, **request_fields())
"""Every generation parameter, optional, as TGI's `parameters` object names it."""
OpenAIVocabulary = create_model(
    "OpenAIVocabulary",
    __base__=StrictRequest,
    **request_fields(exclude=frozenset({"max_new_tokens", "do_sample", "stop", "temperature"})),
)
"""The vocabulary in OpenAI's shape: `max_tokens`, `stop` as a string or list, and
temperature 0 meaning greedy (so no `do_sample`); defined by the request classes below."""


def _bool_only(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("Input should be a valid boolean")
    return value


Off = Annotated[Literal[False], BeforeValidator(_bool_only)]
"""A flag accepted only off (false; 0 is no boolean)."""
Neutral = Field(None, ge=0, le=0)
"""A number this server accepts only at its neutral value 0 (the schema says so)."""
One = Field(None, ge=1, le=1)
"""A number accepted only at its neutral value 1."""


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
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


class StreamOptions(StrictRequest):
    include_usage: bool = False


class ResponseFormat(StrictRequest):
    type: Literal["text"]
    """Plain text, the neutral value; `json_object` and `json_schema` are not implemented."""


STREAM_OPTIONS_NEED_STREAM = {
    "stream_options": {"properties": {"stream": {"const": True}}, "required": ["stream"]}
}
"""The schema's way of saying `stream_options` only with `stream: true`."""


class OpenAIOptions(OpenAIVocabulary):
    """Fields shared by /v1/completions and /v1/chat/completions (unknown ones are ignored);
    `ignore_eos` and `min_tokens` are vLLM's extensions, the rest of the vocabulary ours."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "dependentSchemas": {
                "stream_options": {
                    "properties": {"stream": {"const": True}},
                    "required": ["stream"],
                }
            }
        },
    )

    model: str | None = None
    """The served model's id (`GET /v1/models`); any other is answered 404."""
    temperature: float | None = Field(None, ge=0)
    """0 (or below 0.01) is greedy; default 1 (OpenAI's)."""
    stop: StopText | list[StopText] | None = None
    n: int = Field(1, ge=1, le=16)
    """Choices per prompt (each its own sampled generation)."""
    stream: bool = False
    stream_options: StreamOptions | None = None
    """Only with `stream: true` (400 otherwise, as OpenAI answers)."""
    hold_back_deletable: bool = True
    """Default on: OpenAI clients cannot erase, so a streamed token is never one later deleted."""
    user: str | None = None
    """Accepted for compatibility and ignored (OpenAI's abuse-monitoring id)."""
    # Parts of OpenAI's API this server does not implement: only their neutral values pass.
    frequency_penalty: float | None = Neutral
    presence_penalty: float | None = Neutral
    logit_bias: dict[str, float] | None = Field(None, max_length=0)
    best_of: int | None = One
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> OpenAIOptions:
        if self.stream_options is not None and not self.stream:
            raise StreamOptionsWithoutStream()
        return self


class StreamOptionsWithoutStream(ValueError):
    """OpenAI answers 400 for `stream_options` without `stream: true`."""

    def __init__(self) -> None:
        super().__init__("stream_options is only allowed when stream is true")


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Prompt = Annotated[
    Annotated[str, Field(min_length=1)]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=16)]
    | TokenIds
    | Annotated[list[TokenIds], Field(min_length=1, max_length=16)],
    Field(union_mode="left_to_right"),
]


class CompletionRequest(OpenAIOptions):
    prompt: Prompt
    """One prompt or a list (one choice per prompt), as text or token ids."""
    max_tokens: int | None = Field(16, ge=0)
    """0 generates nothing (with `echo`, scores the prompt alone)."""
    logprobs: int | None = Field(None, ge=0, le=20)
    """Log-probabilities of each returned token plus this many most likely alternatives."""
    echo: bool = False
    """Return the prompt before the completion (with its tokens' logprobs when asked)."""
    suffix: str | None = Field(None, max_length=0)


class TextPart(StrictRequest):
    """A text part of a message's content (the only kind this text-only server reads)."""

    type: Literal["text"]
    text: str = Field(min_length=1)


class ChatMessage(StrictRequest):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Annotated[str, Field(min_length=1)] | Annotated[list[TextPart], Field(min_length=1)]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(OpenAIOptions):
    model_config = ConfigDict(
        strict=True,
        json_schema_extra={
            "dependentSchemas": {
                **STREAM_OPTIONS_NEED_STREAM,
                "top_logprobs": {
                    "properties": {"logprobs": {"const": True}},
                    "required": ["logprobs"],
                },
            }
        },
    )
    messages: list[ChatMessage] = Field(min_length=1)
    """The conversation; its contents together are at most max_input_chars characters (a sum
    over messages, which a schema cannot state) and the chat template may refuse an order."""
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    """Return the log-probability of each output token."""
    top_logprobs: int | None = Field(None, ge=0, le=20)
    """With `logprobs`: this many most likely alternatives per token."""
    tools: list[Any] | None = Field(None, max_length=0)


class TgiError(BaseModel):
    """A refusal on the TGI routes (TGI's shape, plus the field for a validation error)."""

    error: str
    error_type: str
    field: str | None = None


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | None = None


class OpenAIError(BaseModel):
    """A refusal on the /v1 routes (OpenAI's shape)."""

    error: OpenAIErrorBody


REFUSALS = {
    400: "the body is not JSON, or stream_options without stream",
    401: "missing or wrong API key",
    404: "an unknown model",
    413: "the body is larger than max_request_bytes",
    422: "a field out of its range, of the wrong type, or unknown; names the field",
    429: "every slot and queue place taken (Retry-After)",
    499: "the client disconnected before the answer",
    500: "generation failed",
    503: "loading or shutting down (Retry-After)",
}


def error_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The refusals a generation route can answer, documented with their body."""
    return {code: {"model": model, "description": text} for code, text in REFUSALS.items()}


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
    """TGI's rule: sampling when `do_sample` or any warper is set (temperature other than 1,
    top_k, top_p below 1), as its NextTokenChooser decides (`do_sample or has_warpers`)."""
    values = vocabulary_values(parameters)
    warped = (
        (parameters.temperature is not None and parameters.temperature != 1.0)
        or parameters.top_k is not None
        or (parameters.top_p is not None and parameters.top_p < 1.0)
    )
    if warped:
        values["do_sample"] = True
    return build_params(limits, values, field_prefix="parameters.")


def openai_params(
    body: CompletionRequest | ChatCompletionRequest, limits: Limits, max_tokens: int | None = None
) -> GenerationParams:
    """OpenAI semantics: sampling at temperature 1 by default; temperature 0 (or below
    MIN_TEMPERATURE, like vLLM's cut-off) means greedy."""
    values = vocabulary_values(body)
    values.pop("temperature", None)
    temperature = 1.0 if body.temperature is None else body.temperature
    greedy = temperature < MIN_TEMPERATURE
    if not greedy:
        values["temperature"] = temperature
    values["do_sample"] = not greedy
    values["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    name = "max_tokens"
    if max_tokens is None:
        max_tokens = body.max_tokens
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
            if name == "prompt":
                _bound_token_ids(prop, limits)
            if name == "model" and limits.model_id is not None:
                for branch in prop.get("anyOf", [prop]):
                    if branch.get("type") == "string":
                        branch["enum"] = [limits.model_id]
    return schema


def _bound_token_ids(prop: dict[str, Any], limits: Limits) -> None:
    """Token-id prompts: ids below the vocabulary size, at most the input token limit."""
    for branch in prop.get("anyOf", [prop]):
        items = branch.get("items", {})
        if items.get("type") == "array":  # list[list[int]]
            items = items.setdefault("items", {})
            target = branch["items"]
        else:
            target = branch
        if items.get("type") == "integer":
            if limits.vocab_size is not None:
                items["maximum"] = limits.vocab_size - 1
            if limits.max_prompt_tokens is not None:
                target["maxItems"] = limits.max_prompt_tokens
            items.pop("maxLength", None)


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
