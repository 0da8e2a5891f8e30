"""`POST /v1/completions`, `POST /v1/chat/completions` and `GET /v1/models`, as the openai SDK expects.

OpenAI clients cannot erase text, so streams hold back every token a later backtrack could still
delete (`hold_back_deletable`, default on): the concatenated deltas always equal the final text.
With it off, tokens stream at once and each deletion arrives as a chunk with empty text and a
`backtrack` field in its choice, which an unaware client ignores.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from sse_starlette import ServerSentEvent

from backtrack.events import BacktrackEvent, DoneEvent, TokenEvent, event_payload
from backtrack.params import GenerationParams
from server.api.deps import Service, get_stream_options, require_api_key
from server.api.errors import ApiError
from server.api.formats import openai_finish_reason
from server.api.schemas import ChatCompletionRequest, CompletionRequest, openai_params
from server.api.streaming import collect, sse_data, sse_response
from server.engine import Stream
from server.service import GenerationService

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], tags=["openai"])


@router.get("/models", summary="The one model this server serves")
async def list_models(service: Service) -> dict[str, Any]:
    model = {"id": service.served.model_id, "object": "model", "created": 0, "owned_by": "local"}
    return {"object": "list", "data": [model]}


@router.post("/completions", summary="OpenAI text completions, streaming or not")
async def completions(body: CompletionRequest, request: Request, service: Service) -> Any:
    if isinstance(body.prompt, list):
        if len(body.prompt) != 1:
            raise ApiError(422, "prompt: give one prompt per request", "validation", "prompt")
        prompt = body.prompt[0]
    else:
        prompt = body.prompt
    params = openai_params(body, service.limits)
    prompt_ids = await service.encode_completion(prompt, "prompt")
    shape = Shape.completion(body, service)
    return await _serve(body, params, prompt_ids, shape, request, service)


@router.post("/chat/completions", summary="OpenAI chat completions, streaming or not")
async def chat_completions(body: ChatCompletionRequest, request: Request, service: Service) -> Any:
    params = openai_params(body, service.limits)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt_ids = await service.encode_chat(messages, "messages")
    return await _serve(body, params, prompt_ids, Shape.chat(body, service), request, service)


async def _serve(
    body: CompletionRequest | ChatCompletionRequest,
    params: GenerationParams,
    prompt_ids: list[int],
    shape: Shape,
    request: Request,
    service: GenerationService,
) -> Any:
    stream = service.submit(prompt_ids, params, shape.endpoint, body.hold_back_deletable)
    if body.stream:
        return sse_response(stream, shape.frames, get_stream_options(request))
    _events, done = await collect(stream, request)
    if done.finish_reason == "error":
        raise ApiError(500, "generation failed; see the server log", "server_error")
    return shape.answer(done)


class Shape:
    """How one endpoint dresses text: `text_completion` choices or chat messages and deltas."""

    def __init__(
        self, chat: bool, body: CompletionRequest | ChatCompletionRequest, model: str
    ) -> None:
        self.chat = chat
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.model = model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.endpoint = "/v1/chat/completions" if chat else "/v1/completions"

    @classmethod
    def completion(cls, body: CompletionRequest, service: GenerationService) -> Shape:
        return cls(False, body, body.model or service.served.model_id)

    @classmethod
    def chat(cls, body: ChatCompletionRequest, service: GenerationService) -> Shape:
        return cls(True, body, body.model or service.served.model_id)

    # -- non-streaming -------------------------------------------------------------------------

    def answer(self, done: DoneEvent) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": openai_finish_reason(done.finish_reason),
        }
        if self.chat:
            choice["message"] = {"role": "assistant", "content": done.generated_text}
        else:
            choice.update(text=done.generated_text, logprobs=None)
        return {
            **self._envelope(),
            "choices": [choice],
            "usage": usage(done),
            "backtracks": done.backtracks,
            "deleted_tokens": done.removed_tokens,
        }

    # -- streaming -----------------------------------------------------------------------------

    async def frames(self, stream: Stream) -> AsyncIterator[ServerSentEvent]:
        if self.chat:
            yield sse_data(self._chunk({"role": "assistant", "content": ""}))
        async for event in stream:
            if isinstance(event, TokenEvent):
                yield sse_data(self._chunk(self._delta(event.text)))
            elif isinstance(event, BacktrackEvent):
                yield sse_data(self._chunk(self._delta(""), backtrack=event_payload(event)))
            elif isinstance(event, DoneEvent):
                reason = openai_finish_reason(event.finish_reason)
                yield sse_data(
                    self._chunk({} if self.chat else self._delta(""), finish_reason=reason)
                )
                if self.include_usage:
                    yield sse_data(
                        {**self._envelope(chunk=True), "choices": [], "usage": usage(event)}
                    )
        yield sse_data("[DONE]")

    def _delta(self, text: str) -> dict[str, Any]:
        return {"content": text} if self.chat else {"text": text}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, **extra}
        if self.chat:
            choice["delta"] = delta
        else:
            choice.update(delta, logprobs=None)
        return {**self._envelope(chunk=True), "choices": [choice]}

    def _envelope(self, chunk: bool = False) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        if chunk and self.chat:
            kind = "chat.completion.chunk"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(done: DoneEvent) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.generated_tokens,
        "total_tokens": done.prompt_tokens + done.generated_tokens,
    }
