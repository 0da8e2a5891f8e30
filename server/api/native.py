"""`POST /generate` (JSON or the native SSE stream), `POST /generate_stream` and `POST /` (TGI).

The native stream names its events (`token`, `backtrack`, `done`) so clients can show deletions
live. The TGI stream is plain `data:` lines, one per token, the last carrying `generated_text`;
by default it holds back tokens a later backtrack could delete, because TGI clients cannot erase.

The JSON answers and TGI's stream speak TGI's finish reasons only (`length | eos_token |
stop_sequence`), ours beside them in `details.backtrack_finish_reason`; a failed generation is a
424 or, in TGI's stream, TGI's error line. The native stream's `done` keeps our own reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from backtrack.events import BacktrackEvent, DoneEvent, ErrorEvent, TokenEvent, event_payload
from server.api.deps import Service, Streaming, require_api_key
from server.api.errors import ApiError, TgiError, error_responses
from server.api.finish_reasons import EXTENSION_FIELD, tgi_finish_reason
from server.api.formats import final_tokens
from server.api.responses import TgiGeneration
from server.api.streaming import collect, sse_data, sse_event, sse_response
from server.api.tgi_protocol import GenerateRequest, tgi_params
from server.bridge import Stream
from server.service import GenerationService

router = APIRouter(
    dependencies=[Depends(require_api_key)],
    tags=["generation"],
    responses={**error_responses(TgiError), 424: {"model": TgiError, "description": "failed"}},
)
EVENT_STREAM: dict[str, Any] = {"text/event-stream": {}}
JSON_OR_NATIVE_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"model": TgiGeneration, "content": {"application/json": {}, **EVENT_STREAM}}
}
LIST_OR_TGI_STREAM: dict[int | str, dict[str, Any]] = {
    200: {"model": list[TgiGeneration], "content": {"application/json": {}, **EVENT_STREAM}}
}


async def _submit(
    service: GenerationService, body: GenerateRequest, endpoint: str, hold: bool
) -> Stream:
    """Parameters checked first (cheap), then the prompt tokenised off the event loop."""
    params = tgi_params(body.parameters, service.limits)
    prompt_ids = await service.encode_completion(body.inputs, "inputs")
    truncate = body.parameters.truncate
    if truncate is not None:
        prompt_ids = prompt_ids[-truncate:]
    if body.parameters.hold_back_deletable is not None:
        hold = body.parameters.hold_back_deletable
    return service.submit(prompt_ids, params, endpoint, hold_back_deletable=hold)


@router.post(
    "/generate",
    summary="Generate text (JSON, or the native SSE stream with stream=true)",
    responses=JSON_OR_NATIVE_STREAM,
)
async def generate(
    body: GenerateRequest, request: Request, service: Service, streaming: Streaming
) -> Any:
    if body.stream:
        stream = await _submit(service, body, "/generate", hold=False)
        return sse_response(stream, native_frames, streaming)
    return await _generate_json(body, request, service, "/generate")


@router.post(
    "/generate_stream",
    summary="TGI's streaming format (plain data: lines)",
    response_class=EventSourceResponse,
    responses={200: {"content": EVENT_STREAM}},
)
async def generate_stream(
    body: GenerateRequest, service: Service, streaming: Streaming
) -> Response:
    stream = await _submit(service, body, "/generate_stream", hold=True)
    return sse_response(
        stream, TgiRenderer.for_service(service, body.parameters.details).frames, streaming
    )


@router.post(
    "/",
    summary="TGI's compatibility route: a JSON list of one answer, or TGI's stream with stream=true",
    responses=LIST_OR_TGI_STREAM,
)
async def compat_generate(
    body: GenerateRequest, request: Request, service: Service, streaming: Streaming
) -> Any:
    if body.stream:
        return await generate_stream(body, service, streaming)
    return [await _generate_json(body, request, service, "/")]  # TGI answers a list here


async def _generate_json(
    body: GenerateRequest, request: Request, service: GenerationService, endpoint: str
) -> dict[str, Any]:
    stream = await _submit(service, body, endpoint, hold=False)
    events, done = await collect(stream, request)
    if done.finish_reason == "error":
        raise ApiError(424, "generation failed; see the server log", "generation")
    answer: dict[str, Any] = {"generated_text": done.generated_text}
    if body.parameters.details:
        answer["details"] = {
            **tgi_details(done),
            "prefill": [],
            "tokens": [token.tgi(service.special_ids) for token in final_tokens(events)],
            "prompt_tokens": done.prompt_tokens,
            "sampled_tokens": done.sampled_tokens,
            "ignored_backtracks": done.ignored_backtracks,
        }
    return answer


def tgi_details(done: DoneEvent) -> dict[str, Any]:
    """TGI's details: its own finish reason, ours beside it (`server.api.finish_reasons`)."""
    return {
        "finish_reason": tgi_finish_reason(done.finish_reason),
        EXTENSION_FIELD: done.finish_reason,
        "generated_tokens": done.generated_tokens,
        "seed": done.seed,
        "backtracks": done.backtracks,
        "deleted_tokens": done.removed_tokens,
        "backtrack_budget_exhausted": done.backtrack_budget_exhausted,
    }


async def native_frames(stream: Stream) -> AsyncIterator[ServerSentEvent]:
    async for event in stream:
        if isinstance(event, DoneEvent) and event.finish_reason == "error":
            error = ErrorEvent("generation failed; see the server log", "generation")
            yield sse_event(error.kind, event_payload(error))
        yield sse_event(event.kind, event_payload(event))


class TgiRenderer:
    """TGI stream lines; the last token line is held until `done` so it can carry the result."""

    def __init__(
        self,
        special_ids: frozenset[int],
        backtrack_id: int,
        backtrack_token: str,
        eos_id: int | None,
        details: bool,
    ) -> None:
        self.special_ids, self.details = special_ids, details
        self.backtrack_id, self.backtrack_token, self.eos_id = backtrack_id, backtrack_token, eos_id

    @classmethod
    def for_service(cls, service: GenerationService, details: bool) -> TgiRenderer:
        served = service.served
        eos = served.tokenizer.eos_token_id
        return cls(service.special_ids, served.backtrack_id, served.backtrack_token, eos, details)

    async def frames(self, stream: Stream) -> AsyncIterator[ServerSentEvent]:
        pending: dict[str, Any] | None = None
        async for event in stream:
            if isinstance(event, TokenEvent | BacktrackEvent):
                if pending is not None:
                    yield sse_data(pending)
                pending = self._line(event)
            elif isinstance(event, DoneEvent):
                yield sse_data(self._last_line(pending, event))

    def _line(self, event: TokenEvent | BacktrackEvent) -> dict[str, Any]:
        if isinstance(event, TokenEvent):
            token = {
                "id": event.id,
                "text": event.text,
                "logprob": event.logprob,
                "special": event.id in self.special_ids,
            }
            return {"index": event.index, "token": token, "generated_text": None, "details": None}
        # Only when hold-back is off: the deletion appears as the special BT token.
        token = {
            "id": self.backtrack_id,
            "text": self.backtrack_token,
            "logprob": 0.0,
            "special": True,
        }
        return {
            "index": event.index,
            "token": token,
            "generated_text": None,
            "details": None,
            "backtrack": event_payload(event),
        }

    def _last_line(self, pending: dict[str, Any] | None, done: DoneEvent) -> dict[str, Any]:
        if done.finish_reason == "error":
            return {"error": "generation failed; see the server log", "error_type": "generation"}
        if pending is None:  # nothing shown (e.g. EOS at once): TGI ends on a special token
            token = {
                "id": self.eos_id if self.eos_id is not None else 0,
                "text": "",
                "logprob": 0.0,
                "special": True,
            }
            pending = {"index": 0, "token": token}
        pending["generated_text"] = done.generated_text
        pending["details"] = tgi_details(done) if self.details else None
        return pending
