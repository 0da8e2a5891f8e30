"""`POST /v1/responses`'s request body (OpenAI's Responses API) and its GenerationParams.

Text in, one assistant message out: `input` is a string (one user turn) or a list of messages
(`{"role", "content"}` or the `{"type": "message", ...}` item), `instructions` a system message
placed first; the conversation is rendered like `/v1/chat/completions`' messages. The sampling
fields are OpenAI's (`temperature` 0 is greedy, `top_p`, `max_output_tokens`) and the rest of the
vocabulary rides along as on the other `/v1` routes (`seed`, `top_k`, the backtrack options).

Everything else the Responses API defines needs what this server does not have (tools, stored
responses and conversations, reasoning settings, structured output, background runs, images):
each is declared with only its neutral value, so the schema says what passes, and any other
value is refused with a 422 naming the field and why (`UNSUPPORTED`). `store: true` is accepted
and nothing is stored, as vLLM does (most clients send OpenAI's default); the answer says
`"store": false`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from backtrack.params import GenerationParams
from server.api.openai_protocol import (
    STREAM_OPTIONS_NEED_STREAM,
    OpenAIVocabulary,
    StreamOptionsWithoutStream,
    openai_sampling,
)
from server.api.vocabulary import Off, StopText, StrictRequest, build_params, vocabulary_values
from server.limits import Limits

NO_TOOLS = "this server calls no tools"
STATELESS = "this server stores no responses or conversations; send the whole conversation"
UNSUPPORTED: dict[str, str] = {
    "tools": f"{NO_TOOLS} (only [])",
    "tool_choice": f'{NO_TOOLS} (only "auto" or "none")',
    "max_tool_calls": NO_TOOLS,
    "previous_response_id": f"{STATELESS} in input",
    "conversation": f"{STATELESS} in input",
    "prompt": "there are no stored prompt templates here",
    "context_management": "there is no context compaction here",
    "include": "there is no extra output to include (only [])",
    "reasoning": "the model has no reasoning settings",
    "text": 'output is plain text: only {"format": {"type": "text"}} (no JSON schema, no verbosity)',
    "top_logprobs": "log-probabilities are not offered here (only 0; see /v1/chat/completions)",
    "background": "every response runs while the request waits (only false)",
    "background_options": "every response runs while the request waits",
    "truncation": 'an input over the limit is refused, never truncated (only "disabled")',
    "service_tier": 'there is one tier (only "auto" or "default")',
    "prompt_cache_retention": "there is no prompt cache here",
    "prompt_cache_options": "there is no prompt cache here",
    "image": "this server generates text only",
    "moderation": "this server runs no moderation",
    "access_programs": "there are no access programs here",
    "stream_options": "this server adds no obfuscation (only include_obfuscation false)",
}
"""Responses API fields this server cannot honour -> why; only their neutral value passes."""
ITEM_KINDS = "this server takes messages only (it calls no tools and keeps no reasoning items)"
TEXT_ONLY = "this server reads text only"


def _shape(value: Any) -> str | None:
    """The branch of a `str | list` field a value belongs to (the error then names only it).

    Tags look like pydantic's own union tags, so an error's field name leaves them out."""
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list[]"
    return None


def _refuse(message: str) -> PydanticCustomError:
    """A refusal saying what is not supported and why (its place in the body names the field)."""
    return PydanticCustomError("unsupported", message)


def _known_kind(value: Any, handler: ValidatorFunctionWrapHandler, refusal: str) -> Any:
    """A `type` the API defines but this server does not take is refused with `refusal`, which
    names it; any other bad value keeps pydantic's own error."""
    try:
        return handler(value)
    except ValidationError:
        if isinstance(value, str):
            raise _refuse(refusal) from None
        raise


NonEmptyText = Annotated[str, Field(min_length=1)]


class InputText(StrictRequest):
    """A text part of a message (`output_text`: an earlier answer sent back as context)."""

    type: Literal["input_text", "output_text"]
    text: str = Field(min_length=1)
    """Not empty, as chat's text parts: every message then adds to the prompt."""

    @field_validator("type", mode="wrap")
    @classmethod
    def _text_only(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # input_image, input_file, input_audio, refusal...
        return _known_kind(value, handler, f"{value} content is not supported: {TEXT_ONLY}")


class InputMessage(StrictRequest):
    """One turn of the conversation; an earlier answer's output item may be sent back as is
    (its `id` and `status` are ignored)."""

    type: Literal["message"] | None = None
    """Only messages: the item types of tools and reasoning are refused by name."""
    role: Literal["user", "system", "assistant", "developer"]
    content: Annotated[
        Annotated[NonEmptyText, Tag("str")]
        | Annotated[list[InputText], Field(min_length=1), Tag("list[]")],
        Discriminator(
            _shape,
            custom_error_type="content_type",
            custom_error_message="Input should be a string or a list of input_text parts",
        ),
    ]

    @field_validator("type", mode="wrap")
    @classmethod
    def _messages_only(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # function_call_output, item_reference, reasoning...
        return _known_kind(value, handler, f"{value} items are not supported: {ITEM_KINDS}")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class PlainTextFormat(StrictRequest):
    type: Literal["text"]


class TextOptions(StrictRequest):
    format: PlainTextFormat | None = None
    verbosity: None = None


class ResponsesStreamOptions(StrictRequest):
    include_obfuscation: Off = False


class ResponsesRequest(OpenAIVocabulary):
    """OpenAI's Responses API request; unknown fields are ignored, as on the other /v1 routes,
    and every field the API defines is declared (refused by name when it cannot be honoured)."""

    model_config = ConfigDict(
        strict=True, json_schema_extra={"dependentSchemas": STREAM_OPTIONS_NEED_STREAM}
    )

    model: str | None = None
    """The served model's id (`GET /v1/models`); any other is answered 404."""
    input: Annotated[
        Annotated[NonEmptyText, Tag("str")]
        | Annotated[list[InputMessage], Field(min_length=1), Tag("list[]")],
        Discriminator(
            _shape,
            custom_error_type="input_type",
            custom_error_message="Input should be a string or a list of messages",
        ),
    ]
    """A string (one user message) or the conversation as messages; its contents together with
    `instructions` are at most max_input_chars characters."""
    instructions: str | None = None
    """A system message placed before the input."""
    max_output_tokens: int | None = Field(None, ge=1)
    """Most visible tokens in the answer; reaching it makes the response `incomplete`."""
    temperature: float | None = Field(None, ge=0)
    """0 (or below 0.01) is greedy; default 1 (OpenAI's)."""
    stop: StopText | list[StopText] | None = None
    """Stop sequences, as on /v1/chat/completions (not part of OpenAI's Responses API; an
    extension like the rest of the vocabulary, so it is honoured rather than ignored)."""
    stream: bool = False
    """Typed SSE events (`response.created` ... `response.completed`)."""
    hold_back_deletable: bool = True
    """Default on: a streamed delta is never one a later backtrack deletes."""
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    ) = None
    """Up to 16 string pairs, returned with the response."""
    store: bool | None = None
    """Accepted and nothing is stored (as vLLM does); the response says `"store": false`."""
    user: str | None = None
    """Accepted and returned; ignored otherwise (an end-user id for OpenAI's monitoring)."""
    safety_identifier: str | None = None
    """Accepted and returned; ignored otherwise (as `user`)."""
    prompt_cache_key: str | None = None
    """Accepted and returned; a cache-routing hint that changes nothing here (no prompt cache)."""
    parallel_tool_calls: bool | None = None
    """Accepted and returned; there are no tools to call."""
    # What this server cannot honour: only the neutral value passes (`UNSUPPORTED` says why).
    tools: list[Any] | None = Field(None, max_length=0)
    tool_choice: Literal["auto", "none"] | None = None
    max_tool_calls: None = None
    previous_response_id: None = None
    conversation: None = None
    prompt: None = None
    context_management: None = None
    include: list[Any] | None = Field(None, max_length=0)
    reasoning: None = None
    text: TextOptions | None = None
    top_logprobs: int | None = Field(None, ge=0, le=0)
    background: Off | None = None
    background_options: None = None
    truncation: Literal["disabled"] | None = None
    service_tier: Literal["auto", "default"] | None = None
    prompt_cache_retention: None = None
    prompt_cache_options: None = None
    image: None = None
    moderation: None = None
    access_programs: None = None
    stream_options: ResponsesStreamOptions | None = None

    @field_validator(*UNSUPPORTED, mode="wrap")
    @classmethod
    def _refuse_unsupported(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise _refuse(f"not supported: {UNSUPPORTED[info.field_name or '']}") from None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> ResponsesRequest:
        if self.stream_options is not None and not self.stream:
            raise StreamOptionsWithoutStream()
        return self

    def messages(self) -> list[dict[str, str]]:
        """The conversation as the chat template reads it: instructions first, as the system."""
        turns = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*turns, {"role": "user", "content": self.input}]
        return turns + [{"role": m.role, "content": m.text()} for m in self.input]


def responses_params(body: ResponsesRequest, limits: Limits) -> GenerationParams:
    """OpenAI's sampling (temperature 1 by default, 0 greedy); `max_output_tokens` bounds the
    visible answer and is named in its refusals."""
    values = openai_sampling(vocabulary_values(body), body.temperature)
    values["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if body.max_output_tokens is not None:
        values["max_new_tokens"] = body.max_output_tokens
    return build_params(limits, values, field_prefix="", max_tokens_name="max_output_tokens")
