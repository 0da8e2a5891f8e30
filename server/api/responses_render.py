"""`POST /v1/responses` answers: one `response` object, or its typed SSE events.

A stream is the events the openai SDK reads, in its order, each as `event: <type>` and
`data: {...}` with a `sequence_number`: `response.created`, `response.in_progress`,
`response.output_item.added`, `response.content_part.added`, one `response.output_text.delta`
per released token, `response.output_text.done`, `response.content_part.done`,
`response.output_item.done`, then `response.completed` or `response.incomplete`. Deletable
tokens are held back as on the other `/v1` routes, so the deltas add up to the final text; with
`hold_back_deletable` off each deletion is a delta with empty text and a `backtrack` field,
which an unaware client ignores. A failed generation ends with `response.failed` and then an
`error` event whose `error` body (the `/v1` error shape) makes the SDK raise `APIError`.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from pydantic import BaseModel
from sse_starlette import ServerSentEvent

from backtrack.events import BacktrackEvent, DoneEvent, TokenEvent, event_payload
from backtrack.params import GenerationParams
from server.api.choices import Choices
from server.api.errors import ApiError
from server.api.responses_objects import (
    DeletedToken,
    IncompleteDetails,
    ItemStatus,
    OutputMessage,
    OutputText,
    ResponseErrorBody,
    ResponseObject,
    ResponseStatus,
    ResponseUsage,
)
from server.api.responses_protocol import ResponsesRequest
from server.api.streaming import sse_event

JsonObject = dict[str, Any]
FAILED = "generation failed; see the server log"
COMPLETE_REASONS = frozenset({"eos", "stop"})
"""Finish reasons of a whole answer; `length` is `max_output_tokens`, the rest keep their name."""


def response_status(finish_reason: str) -> tuple[ResponseStatus, IncompleteDetails | None]:
    """A finish reason as the Responses API states it: the status and why it is incomplete."""
    if finish_reason in COMPLETE_REASONS:
        return "completed", None
    if finish_reason == "error":
        return "failed", None
    reason = "max_output_tokens" if finish_reason == "length" else finish_reason
    return "incomplete", IncompleteDetails(reason=reason)


class ResponsesRenderer:
    """One request's `response` object, as JSON or as its stream of typed events."""

    endpoint = "/v1/responses"

    def __init__(
        self, model: str, body: ResponsesRequest, params: GenerationParams, prompt_tokens: int
    ) -> None:
        self.model, self.body, self.params = model, body, params
        self.prompt_tokens = prompt_tokens
        self.id = f"resp_{uuid.uuid4().hex}"
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.created_at = int(time.time())

    def snapshot(
        self,
        status: ResponseStatus,
        output: list[OutputMessage],
        done: DoneEvent | None = None,
        error: ResponseErrorBody | None = None,
    ) -> ResponseObject:
        """The response as it stands; with `done`, its usage, backtracks and end."""
        body = self.body
        finished: JsonObject = {}
        if done is not None:
            output_tokens = done.generated_tokens
            finished = {
                "usage": ResponseUsage(
                    input_tokens=self.prompt_tokens,
                    output_tokens=output_tokens,
                    total_tokens=self.prompt_tokens + output_tokens,
                ),
                "incomplete_details": response_status(done.finish_reason)[1],
                "completed_at": int(time.time()) if status == "completed" else None,
                "backtracks": done.backtracks,
                "deleted_tokens": [DeletedToken(**token) for token in done.removed_tokens],
            }
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            error=error,
            model=self.model,
            output=output,
            instructions=body.instructions,
            max_output_tokens=self.params.max_new_tokens,
            temperature=0.0 if not self.params.do_sample else self.params.temperature,
            top_p=1.0 if self.params.top_p is None else self.params.top_p,
            metadata=body.metadata or {},
            user=body.user,
            safety_identifier=body.safety_identifier,
            prompt_cache_key=body.prompt_cache_key,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            tool_choice=body.tool_choice or "auto",
            **finished,
        )

    def message(self, status: ItemStatus, text: str | None) -> OutputMessage:
        """The output item; no content part yet when `text` is None."""
        content = [] if text is None else [OutputText(text=text)]
        return OutputMessage(id=self.item_id, status=status, content=content)

    def finished(self, done: DoneEvent) -> ResponseObject:
        status, _ = response_status(done.finish_reason)
        item_status: ItemStatus = "completed" if status == "completed" else "incomplete"
        return self.snapshot(status, [self.message(item_status, done.generated_text)], done)

    def answer(self, done: DoneEvent) -> JsonObject:
        """The non-streaming answer (a failed generation is a 500, as on the other routes)."""
        if done.finish_reason == "error":
            raise ApiError(500, FAILED, "server_error")
        return self.finished(done).model_dump(mode="json")

    async def frames(self, choices: Choices) -> AsyncIterator[ServerSentEvent]:
        numbers = itertools.count()

        def event(kind: str, **fields: Any) -> ServerSentEvent:
            data = {"type": kind, "sequence_number": next(numbers), **_dumped(fields)}
            return sse_event(kind, data)

        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        opening = self.snapshot("in_progress", [])
        yield event("response.created", response=opening)
        yield event("response.in_progress", response=opening)
        yield event(
            "response.output_item.added", output_index=0, item=self.message("in_progress", None)
        )
        yield event("response.content_part.added", **where, part=OutputText(text=""))
        shown: list[str] = []
        done: DoneEvent | None = None
        async for _, step in choices:
            if isinstance(step, TokenEvent):
                shown.append(step.text)
                yield event("response.output_text.delta", **where, delta=step.text, logprobs=[])
            elif isinstance(step, BacktrackEvent):  # only with hold_back_deletable off
                shown.pop()
                erased = event_payload(step)
                yield event(
                    "response.output_text.delta", **where, delta="", logprobs=[], backtrack=erased
                )
            elif isinstance(step, DoneEvent):
                done = step
        if done is None or done.finish_reason == "error":
            for frame in self._failure(event, "".join(shown), done):
                yield frame
            return
        final = self.finished(done)
        text, item = done.generated_text, final.output[0]
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part=item.content[0])
        yield event("response.output_item.done", output_index=0, item=item)
        ending = "response.completed" if final.status == "completed" else "response.incomplete"
        yield event(ending, response=final)

    def _failure(
        self, event: Callable[..., ServerSentEvent], shown: str, done: DoneEvent | None
    ) -> list[ServerSentEvent]:
        """`response.failed` (the lifecycle's end), then `error` with the `/v1` error body."""
        error = ResponseErrorBody(message=FAILED)
        partial = [self.message("incomplete", shown)]
        body = ApiError(500, FAILED, "server_error").openai_body().error.model_dump()
        return [
            event("response.failed", response=self.snapshot("failed", partial, done, error)),
            event("error", code="server_error", message=FAILED, param=None, error=body),
        ]


def _dumped(fields: dict[str, Any]) -> JsonObject:
    """Event fields as JSON values (the models dumped as the SDK reads them)."""
    return {
        name: value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        for name, value in fields.items()
    }
