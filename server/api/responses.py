"""What the TGI and OpenAI routes answer, described for the OpenAPI schema.

The routes build plain dicts (cheap, and the streams are written frame by frame); these models
only describe them: the JSON answers through FastAPI's `responses`, and each stream's events
(`describe_streams`, an event's `data` as JSON with its `contentSchema`, the way OpenAPI 3.1
describes one event of a `text/event-stream`). The schemathesis run over `/openapi.json` checks
real answers against them. `finish_reason` is each protocol's closed set; our own reason is
`backtrack_finish_reason` beside it (`server.api.finish_reasons`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from server.api.errors import OpenAIError
from server.api.finish_reasons import EXTENSION_DESCRIPTION, OpenAIFinishReason, TgiFinishReason


def ours() -> Any:
    return Field(description=EXTENSION_DESCRIPTION)


def ours_on_the_last_chunk() -> Any:
    return Field(None, description=f"On a choice's last chunk only. {EXTENSION_DESCRIPTION}")


def deletion() -> Any:
    return Field(None, description="A deletion, sent only when hold_back_deletable is off.")


class TgiToken(BaseModel):
    id: int
    text: str
    logprob: float
    special: bool


class DeletedToken(BaseModel):
    id: int
    text: str
    index: int


class TgiStreamDetails(BaseModel):
    finish_reason: TgiFinishReason
    backtrack_finish_reason: str = ours()
    generated_tokens: int
    seed: int | None
    backtracks: int
    deleted_tokens: list[DeletedToken]


class TgiDetails(TgiStreamDetails):
    prefill: list[TgiToken]
    tokens: list[TgiToken]
    """The kept tokens."""
    prompt_tokens: int
    sampled_tokens: int
    ignored_backtracks: int


class TgiGeneration(BaseModel):
    """`POST /generate` and each item of `POST /`'s list."""

    generated_text: str
    details: TgiDetails | None = Field(None, description="With parameters.details: true.")


class TgiStreamLine(BaseModel):
    """One `data:` line of TGI's stream; only the last carries `generated_text` and details."""

    index: int
    token: TgiToken
    generated_text: str | None
    details: TgiStreamDetails | None
    backtrack: dict[str, Any] | None = deletion()


class TgiStreamError(BaseModel):
    """The line that ends a TGI stream whose generation failed (TGI's shape)."""

    error: str
    error_type: Literal["generation"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIEnvelope(BaseModel):
    id: str
    created: int
    model: str


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: OpenAIFinishReason
    backtrack_finish_reason: str = ours()
    logprobs: dict[str, Any] | None


class Completion(OpenAIEnvelope):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage
    backtracks: int
    deleted_tokens: list[DeletedToken]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: OpenAIFinishReason
    backtrack_finish_reason: str = ours()
    logprobs: dict[str, Any] | None


class ChatCompletion(OpenAIEnvelope):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage
    backtracks: int
    deleted_tokens: list[DeletedToken]


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: OpenAIFinishReason | None
    backtrack_finish_reason: str | None = ours_on_the_last_chunk()
    logprobs: dict[str, Any] | None
    backtrack: dict[str, Any] | None = deletion()


class CompletionChunk(OpenAIEnvelope):
    object: Literal["text_completion"]
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: OpenAIFinishReason | None
    backtrack_finish_reason: str | None = ours_on_the_last_chunk()
    logprobs: dict[str, Any] | None
    backtrack: dict[str, Any] | None = deletion()


class ChatCompletionChunk(OpenAIEnvelope):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


STREAM_EVENTS: dict[str, tuple[list[type[BaseModel]], bool]] = {
    "/generate_stream": ([TgiStreamLine, TgiStreamError], False),
    "/": ([TgiStreamLine, TgiStreamError], False),
    "/v1/completions": ([CompletionChunk, OpenAIError], True),
    "/v1/chat/completions": ([ChatCompletionChunk, OpenAIError], True),
}
"""Each streaming route's event data (one of these models), and whether it ends on `[DONE]`."""
COMPONENTS = "#/components/schemas/{model}"


def describe_streams(schema: dict[str, Any]) -> dict[str, Any]:
    """Write each stream's event schema into FastAPI's schema, its models into components."""
    models = {model for events, _ in STREAM_EVENTS.values() for model in events}
    _, definitions = models_json_schema(
        [(model, "serialization") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template=COMPONENTS,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, definition in definitions.get("$defs", {}).items():
        components.setdefault(name, definition)
    for path, (events, ends_with_done) in STREAM_EVENTS.items():
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        content["text/event-stream"] = {"schema": event_schema(events, ends_with_done)}
    return schema


def event_schema(events: list[type[BaseModel]], ends_with_done: bool) -> dict[str, Any]:
    """One SSE event whose `data` is JSON of one of `events` (or the closing `[DONE]`)."""
    refs = [{"$ref": COMPONENTS.format(model=model.__name__)} for model in events]
    data: dict[str, Any] = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": refs},
    }
    if ends_with_done:
        data = {"type": "string", "if": {"const": "[DONE]"}, "else": data}
    return {"type": "object", "properties": {"data": data}, "required": ["data"]}
