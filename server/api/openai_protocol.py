"""OpenAI's request bodies (`POST /v1/completions`, `/v1/chat/completions`) and their
GenerationParams.

The vocabulary in OpenAI's shape (`server.api.vocabulary`): `max_tokens`, `stop` as a string or
a list, temperature 0 meaning greedy (so no `do_sample`); `ignore_eos` and `min_tokens` are
vLLM's extensions. Parts of OpenAI's API this server does not implement pass only at their
neutral values, so a client is never silently served something it did not ask for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ConfigDict, Field, create_model, model_validator
from pydantic.config import JsonDict

from backtrack.params import MIN_TEMPERATURE, GenerationParams
from server.api.vocabulary import (
    Neutral,
    One,
    StopText,
    StrictRequest,
    build_params,
    request_fields,
    vocabulary_values,
)
from server.limits import Limits

OWN_SHAPE = frozenset({"max_new_tokens", "do_sample", "stop", "temperature"})
"""Vocabulary fields OpenAI spells its own way (defined by the request classes below)."""

if TYPE_CHECKING:  # the checker sees the base; the fields are made from the vocabulary below
    OpenAIVocabulary = StrictRequest
else:
    OpenAIVocabulary = create_model(
        "OpenAIVocabulary", __base__=StrictRequest, **request_fields(exclude=OWN_SHAPE)
    )
    """The vocabulary in OpenAI's shape: `max_tokens`, `stop` as a string or list, and
    temperature 0 meaning greedy (so no `do_sample`); defined by the request classes below."""


class StreamOptions(StrictRequest):
    include_usage: bool = False


class ResponseFormat(StrictRequest):
    type: Literal["text"]
    """Plain text, the neutral value; `json_object` and `json_schema` are not implemented."""


STREAM_OPTIONS_NEED_STREAM: JsonDict = {
    "stream_options": {"properties": {"stream": {"const": True}}, "required": ["stream"]}
}
"""The schema's way of saying `stream_options` only with `stream: true`."""


class OpenAIOptions(OpenAIVocabulary):
    """Fields shared by /v1/completions and /v1/chat/completions (unknown ones are ignored);
    `ignore_eos` and `min_tokens` are vLLM's extensions, the rest of the vocabulary ours."""

    model_config = ConfigDict(
        strict=True,
        json_schema_extra={"dependentSchemas": STREAM_OPTIONS_NEED_STREAM},
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


def openai_sampling(values: dict[str, Any], temperature: float | None) -> dict[str, Any]:
    """OpenAI semantics: sampling at temperature 1 by default; temperature 0 (or below
    MIN_TEMPERATURE, like vLLM's cut-off) means greedy (OpenAI has no `do_sample`)."""
    values = {name: value for name, value in values.items() if name != "temperature"}
    temperature = 1.0 if temperature is None else temperature
    greedy = temperature < MIN_TEMPERATURE
    if not greedy:
        values["temperature"] = temperature
    values["do_sample"] = not greedy
    return values


def openai_params(
    body: CompletionRequest | ChatCompletionRequest, limits: Limits, max_tokens: int | None = None
) -> GenerationParams:
    """OpenAI's sampling (`openai_sampling`), `stop` as a string or a list, `max_tokens` (or
    chat's `max_completion_tokens`) named in its refusals."""
    values = openai_sampling(vocabulary_values(body), body.temperature)
    values["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    name = "max_tokens"
    if max_tokens is None:
        max_tokens = body.max_tokens
        if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
            max_tokens, name = body.max_completion_tokens, "max_completion_tokens"
    if max_tokens is not None:
        values["max_new_tokens"] = max_tokens
    return build_params(limits, values, field_prefix="", max_tokens_name=name)
