"""`POST /v1/completions`, `POST /v1/chat/completions` and `GET /v1/models`, as the openai SDK expects.

OpenAI clients cannot erase text, so streams hold back every token a later backtrack could still
delete (`hold_back_deletable`, default on): the concatenated deltas always equal the final text.
With it off, tokens stream at once and each deletion arrives as a chunk with empty text and a
`backtrack` field in its choice, which an unaware client ignores.

Completions take one prompt or a list, as text or token ids (`list[int]`, `list[list[int]]`),
and `n` choices per prompt; choice `index` is `prompt * n + j`, as OpenAI and vLLM number them.
Each choice is its own request in the engine's batch.

`logprobs` (and chat `logprobs`/`top_logprobs`) are the model's own log-probabilities of the
returned tokens given the prompt and the tokens before them, with the top alternatives: one extra
forward over prompt + final text on the engine's worker thread (`GenerationService.score`), so a
deleted token is never part of them and each kept token is scored in the context it has in the
final text (its context when it was drawn, in `rewind` mode). `echo` adds the prompt's tokens
(the first one with logprob null), which is how evaluation harnesses score likelihoods.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from sse_starlette import ServerSentEvent

from backtrack.events import BacktrackEvent, DoneEvent, Event, TokenEvent, event_payload
from backtrack.params import MAX_SEED, GenerationParams
from server.api.deps import Service, get_stream_options, require_api_key
from server.api.errors import ApiError
from server.api.formats import final_tokens, openai_finish_reason
from server.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIError,
    error_responses,
    openai_params,
)
from server.api.streaming import sse_data, sse_response, unless_disconnected
from server.engine import Stream
from server.service import GenerationService, ScoredToken

router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_api_key)],
    tags=["openai"],
    responses=error_responses(OpenAIError),
)
JSON_OR_STREAM = {200: {"content": {"application/json": {}, "text/event-stream": {}}}}


@router.get("/models", summary="The one model this server serves")
async def list_models(service: Service) -> dict[str, Any]:
    model = {"id": service.served.model_id, "object": "model", "created": 0, "owned_by": "local"}
    return {"object": "list", "data": [model]}


def check_model(body: CompletionRequest | ChatCompletionRequest, service: GenerationService) -> str:
    """The served id; any other `model` is answered 404, as vLLM does."""
    served = service.served.model_id
    if body.model is not None and body.model != served:
        raise ApiError(404, f"The model `{body.model}` does not exist.", "NotFoundError", "model")
    return served


class Prompt:
    """One prompt of a request: its ids and its text (for `echo`)."""

    def __init__(self, ids: list[int], text: str) -> None:
        self.ids, self.text = ids, text


async def completion_prompts(body: CompletionRequest, service: GenerationService) -> list[Prompt]:
    prompt = body.prompt
    if isinstance(prompt, str):
        return [Prompt(await service.encode_completion(prompt, "prompt"), prompt)]
    if prompt and isinstance(prompt[0], int):
        ids = service.check_token_ids(prompt, "prompt")  # type: ignore[arg-type]
        return [Prompt(ids, service.decode(ids))]
    prompts = []
    for number, item in enumerate(prompt):
        field = f"prompt.{number}"
        if isinstance(item, str):
            prompts.append(Prompt(await service.encode_completion(item, field), item))
        else:
            ids = service.check_token_ids(item, field)
            prompts.append(Prompt(ids, service.decode(ids)))
    return prompts


@router.post(
    "/completions", summary="OpenAI text completions, streaming or not", responses=JSON_OR_STREAM
)
async def completions(body: CompletionRequest, request: Request, service: Service) -> Any:
    model = check_model(body, service)
    generate = body.max_tokens != 0
    params = openai_params(body, service.limits, max_tokens=None if generate else 1)
    prompts = await completion_prompts(body, service)
    shape = Shape(False, body, model, service)
    choices = [(prompt, choice_params(params, j)) for prompt in prompts for j in range(body.n)]
    return await _serve(body, choices, generate, shape, request, service)


@router.post(
    "/chat/completions",
    summary="OpenAI chat completions, streaming or not",
    responses=JSON_OR_STREAM,
)
async def chat_completions(body: ChatCompletionRequest, request: Request, service: Service) -> Any:
    model = check_model(body, service)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(
            422, "top_logprobs: needs logprobs set to true", "invalid_request_error", "top_logprobs"
        )
    params = openai_params(body, service.limits)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    ids = await service.encode_chat(messages, "messages")
    shape = Shape(True, body, model, service)
    choices = [(Prompt(ids, ""), choice_params(params, j)) for j in range(body.n)]
    return await _serve(body, choices, True, shape, request, service)


def choice_params(params: GenerationParams, number: int) -> GenerationParams:
    """Choice `number` of `n`: its own seed (seed + number) so sampled choices differ."""
    if number == 0 or params.seed is None:
        return params
    return params.model_copy(update={"seed": (params.seed + number) % (MAX_SEED + 1)})


class Choices:
    """The streams of one request's choices, read as one: `(choice index, event)`."""

    def __init__(self, streams: list[Stream | None], prompt_tokens: list[int]) -> None:
        self.streams = streams
        self.prompt_tokens = prompt_tokens
        self.done: DoneEvent | None = None
        self.finals: dict[int, DoneEvent] = {}

    def cancel(self) -> None:
        for stream in self.streams:
            if stream is not None and stream.done is None:
                stream.cancel()

    async def events(self) -> AsyncIterator[tuple[int, Event]]:
        queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()

        async def pump(index: int, stream: Stream | None) -> None:
            try:
                if stream is None:  # max_tokens 0: nothing generated
                    done = DoneEvent("", "length", 0, 0, prompt_tokens=self.prompt_tokens[index])
                    await queue.put((index, done))
                else:
                    async for event in stream:
                        await queue.put((index, event))
            finally:
                await queue.put((index, None))

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(self.streams)]
        remaining = len(tasks)
        try:
            while remaining:
                index, event = await queue.get()
                if event is None:
                    remaining -= 1
                    continue
                if isinstance(event, DoneEvent):
                    self.finals[index] = event
                    if len(self.finals) == len(self.streams):
                        self.done = event
                yield index, event
        finally:
            for task in tasks:
                task.cancel()


def submit_all(
    service: GenerationService,
    choices: list[tuple[Prompt, GenerationParams]],
    generate: bool,
    endpoint: str,
    hold_back_deletable: bool,
) -> Choices:
    """Queue every choice; should one be refused (429, 503), those queued are cancelled."""
    streams: list[Stream | None] = []
    try:
        for prompt, params in choices:
            streams.append(
                service.submit(prompt.ids, params, endpoint, hold_back_deletable)
                if generate
                else None
            )
    except Exception:
        for stream in streams:
            if stream is not None:
                stream.cancel()
        raise
    return Choices(streams, [len(prompt.ids) for prompt, _ in choices])


async def collect_all(choices: Choices, request: Request) -> dict[int, list[Event]]:
    """Every event of every choice; cancels them all if the client disconnects first."""
    events: dict[int, list[Event]] = {i: [] for i in range(len(choices.streams))}

    async def gather() -> None:
        async for index, event in choices.events():
            events[index].append(event)

    await unless_disconnected(request, gather(), choices.cancel)
    if choices.done is None:
        raise ApiError(499, "client disconnected", "cancelled")
    return events


async def _serve(
    body: CompletionRequest | ChatCompletionRequest,
    choices: list[tuple[Prompt, GenerationParams]],
    generate: bool,
    shape: Shape,
    request: Request,
    service: GenerationService,
) -> Any:
    shape.prompts = [prompt for prompt, _ in choices]
    streams = submit_all(service, choices, generate, shape.endpoint, body.hold_back_deletable)
    if body.stream:
        return sse_response(streams, shape.frames, get_stream_options(request))  # type: ignore[arg-type]
    events = await collect_all(streams, request)
    if any(done.finish_reason == "error" for done in streams.finals.values()):
        raise ApiError(500, "generation failed; see the server log", "server_error")
    return await shape.answer(events, streams.finals)


class Shape:
    """How one endpoint dresses text: `text_completion` choices or chat messages and deltas."""

    def __init__(
        self,
        chat: bool,
        body: CompletionRequest | ChatCompletionRequest,
        model: str,
        service: GenerationService,
    ) -> None:
        self.chat = chat
        self.service = service
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self.model = model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.endpoint = "/v1/chat/completions" if chat else "/v1/completions"
        self.prompts: list[Prompt] = []
        if isinstance(body, ChatCompletionRequest):
            self.top_n: int | None = (body.top_logprobs or 0) if body.logprobs else None
            self.echo = False
        else:
            self.top_n = body.logprobs
            self.echo = body.echo

    # -- logprobs ------------------------------------------------------------------------------

    async def _scored(self, prompt: Prompt, generated: list[int], start: int) -> list[ScoredToken]:
        assert self.top_n is not None
        return await self.service.score(prompt.ids + generated, start, self.top_n)

    def _completion_logprobs(
        self, scored: list[ScoredToken], texts: list[str], offset: int
    ) -> dict[str, Any]:
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for token, text in zip(scored, texts, strict=True):
            tokens.append(text)
            token_logprobs.append(token.logprob)
            offsets.append(offset)
            offset += len(text)
            if token.logprob is None:
                top_logprobs.append(None)
                continue
            top = {self.service.token_text(i): lp for i, lp in token.top}
            top.setdefault(text, token.logprob)  # the chosen token is always there (vLLM)
            top_logprobs.append(top)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": offsets,
        }

    def _chat_logprobs(self, scored: list[ScoredToken], texts: list[str]) -> dict[str, Any]:
        content = []
        for token, text in zip(scored, texts, strict=True):
            top = [
                _chat_entry(self.service.token_text(i), lp)
                for i, lp in token.top[: self.top_n or 0]
            ]
            content.append({**_chat_entry(text, token.logprob or 0.0), "top_logprobs": top})
        return {"content": content}

    async def _logprobs(
        self, prompt: Prompt, tokens: list[tuple[int, str]], prompt_shown: bool
    ) -> dict[str, Any] | None:
        """The `logprobs` of a choice's `tokens` (id, text), with the prompt's when it is shown."""
        if self.top_n is None:
            return None
        ids = [token for token, _ in tokens]
        start = 0 if prompt_shown else len(prompt.ids)
        scored = await self._scored(prompt, ids, start)
        texts = [text for _, text in tokens]
        if prompt_shown:
            texts = [self.service.token_text(token) for token in prompt.ids] + texts
        if self.chat:
            return self._chat_logprobs(scored, texts)
        return self._completion_logprobs(scored, texts, 0)  # offsets into the choice's text

    # -- non-streaming -------------------------------------------------------------------------

    async def answer(
        self, events: dict[int, list[Event]], finals: dict[int, DoneEvent]
    ) -> dict[str, Any]:
        choices = []
        for index in sorted(finals):
            done, prompt = finals[index], self.prompts[index]
            choice: dict[str, Any] = {
                "index": index,
                "finish_reason": openai_finish_reason(done.finish_reason),
            }
            tokens = [(token.id, token.text) for token in final_tokens(events[index])]
            logprobs = await self._logprobs(prompt, tokens, self.echo)
            if self.chat:
                choice["message"] = {"role": "assistant", "content": done.generated_text}
                choice["logprobs"] = logprobs
            else:
                text = prompt.text + done.generated_text if self.echo else done.generated_text
                choice.update(text=text, logprobs=logprobs)
            choices.append(choice)
        dones = [finals[index] for index in sorted(finals)]
        return {
            **self._envelope(),
            "choices": choices,
            "usage": usage(dones, self._prompt_tokens()),
            "backtracks": sum(done.backtracks for done in dones),
            "deleted_tokens": [token for done in dones for token in done.removed_tokens],
        }

    def _prompt_tokens(self) -> int:
        """Each distinct prompt once (n choices of one prompt share it), as OpenAI counts."""
        return sum(len(prompt.ids) for prompt in {id(p): p for p in self.prompts}.values())

    # -- streaming -----------------------------------------------------------------------------

    async def frames(self, choices: Choices) -> AsyncIterator[ServerSentEvent]:
        count = len(choices.streams)
        shown: dict[int, list[TokenEvent]] = {index: [] for index in range(count)}
        for index in range(count):
            if self.chat:
                yield sse_data(self._chunk(index, {"role": "assistant", "content": ""}))
            elif self.echo:
                prompt = self.prompts[index]
                logprobs = await self._logprobs(prompt, [], True)
                yield sse_data(self._chunk(index, self._delta(prompt.text), logprobs=logprobs))
        async for index, event in choices.events():
            if isinstance(event, TokenEvent):
                logprobs = None
                if self.top_n is not None:
                    logprobs = await self._streamed_logprobs(index, shown[index], event)
                shown[index].append(event)
                yield sse_data(self._chunk(index, self._delta(event.text), logprobs=logprobs))
            elif isinstance(event, BacktrackEvent):
                shown[index].pop()
                yield sse_data(self._chunk(index, self._delta(""), backtrack=event_payload(event)))
            elif isinstance(event, DoneEvent):
                reason = openai_finish_reason(event.finish_reason)
                delta = {} if self.chat else self._delta("")
                yield sse_data(self._chunk(index, delta, finish_reason=reason))
        if self.include_usage:
            dones = [choices.finals[index] for index in sorted(choices.finals)]
            yield sse_data(
                {
                    **self._envelope(chunk=True),
                    "choices": [],
                    "usage": usage(dones, self._prompt_tokens()),
                }
            )
        yield sse_data("[DONE]")

    async def _streamed_logprobs(
        self, index: int, shown: list[TokenEvent], event: TokenEvent
    ) -> dict[str, Any]:
        """The logprobs of one streamed token: a forward over prompt + the tokens shown so far
        (one per token: streaming with logprobs costs a prompt-long forward per token)."""
        prompt = self.prompts[index]
        ids = [token.id for token in shown] + [event.id]
        scored = await self._scored(prompt, ids, len(prompt.ids) + len(shown))
        if self.chat:
            return self._chat_logprobs(scored, [event.text])
        offset = (len(prompt.text) if self.echo else 0) + sum(len(token.text) for token in shown)
        return self._completion_logprobs(scored, [event.text], offset)

    def _delta(self, text: str) -> dict[str, Any]:
        return {"content": text} if self.chat else {"text": text}

    def _chunk(
        self,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason, **extra}
        if self.chat:
            choice["delta"] = delta
            choice["logprobs"] = logprobs
        else:
            choice.update(delta, logprobs=logprobs)
        return {**self._envelope(chunk=True), "choices": [choice]}

    def _envelope(self, chunk: bool = False) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        if chunk and self.chat:
            kind = "chat.completion.chunk"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def _chat_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def usage(dones: list[DoneEvent], prompt_tokens: int) -> dict[str, int]:
    completion = sum(done.generated_tokens for done in dones)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
