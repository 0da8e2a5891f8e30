"""What `POST /v1/responses` answers: OpenAI's `response` object, as pydantic models.

The route's answers are built from these models, so `/openapi.json` documents exactly what is
sent, and every field the openai SDK's `Response` requires is there (`parallel_tool_calls`,
`tool_choice`, `tools`, the usage details). The settings this server does not offer are stated
at their neutral values. `backtracks` and `deleted_tokens` are this server's extension, where
the other `/v1` routes put theirs (at the top level of the answer).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    """Always empty: no citations here."""
    logprobs: list[dict[str, Any]] = Field(default_factory=list)
    """Always empty: log-probabilities are not offered on this route."""


class OutputMessage(BaseModel):
    """The one output item: the assistant's answer."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus
    content: list[OutputText]


class IncompleteDetails(BaseModel):
    reason: str
    """`max_output_tokens` when the answer reached it; otherwise this server's reason for ending
    early (`max_backtracks`, `timeout`, `shutdown`, `cancelled`)."""


class ResponseErrorBody(BaseModel):
    code: Literal["server_error"] = "server_error"
    message: str


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    """Tokens in the final answer (deleted ones are not counted)."""
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class TextFormat(BaseModel):
    type: Literal["text"] = "text"


class TextSettings(BaseModel):
    format: TextFormat = Field(default_factory=TextFormat)


class DeletedToken(BaseModel):
    id: int
    text: str
    index: int
    """Its position in the answer when it was deleted."""


class ResponseObject(BaseModel):
    """OpenAI's `response` object, plus `backtracks` and `deleted_tokens`."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: ResponseStatus
    error: ResponseErrorBody | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputMessage]
    usage: ResponseUsage | None = None
    instructions: str | None
    max_output_tokens: int | None
    temperature: float
    top_p: float
    metadata: dict[str, str]
    user: str | None
    safety_identifier: str | None
    prompt_cache_key: str | None
    parallel_tool_calls: bool
    tool_choice: Literal["auto", "none"]
    tools: list[dict[str, Any]] = Field(default_factory=list)
    max_tool_calls: None = None
    previous_response_id: None = None
    reasoning: None = None
    text: TextSettings = Field(default_factory=TextSettings)
    top_logprobs: int = 0
    truncation: Literal["disabled"] = "disabled"
    service_tier: Literal["default"] = "default"
    background: bool = False
    store: bool = False
    """Nothing is stored, whatever the request said."""
    backtracks: int = 0
    """Backtracks the model took while writing the answer (this server's extension)."""
    deleted_tokens: list[DeletedToken] = Field(default_factory=list)
    """Every token it deleted, in deletion order (this server's extension)."""
