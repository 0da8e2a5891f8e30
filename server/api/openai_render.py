"""What the OpenAI routes answer: one choice per generation, as JSON or as SSE chunks.

`OpenAIRenderer` holds what both protocols share (the envelope, usage, the order of the stream,
scoring the returned tokens for `logprobs`); `CompletionRenderer` (`server.api.completion_render`)
and `ChatRenderer` (`server.api.chat_render`) dress a choice as a `text_completion` or as a chat
message, each in its own module.

`logprobs` are the model's own log-probabilities of the returned tokens given the prompt and the
tokens before them: from the step that drew each token where it carries its score (`rewind` mode,
`TokenEvent.score`), else one extra forward over prompt + final text on the engine's worker thread
(`GenerationService.score`); a deleted token is never part of them.

A choice's `finish_reason` is OpenAI's (`stop | length`), ours beside it in
`backtrack_finish_reason` (`server.api.finish_reasons`). A failed choice fails the answer: a 500,
or in a stream a last chunk `{"error": {...}}`, which the openai SDK raises, then `[DONE]`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from sse_starlette import ServerSentEvent

from backtrack.events import BacktrackEvent, DoneEvent, Event, TokenEvent, event_payload
from server.api.choices import Choices, Prompt
from server.api.errors import ApiError
from server.api.finish_reasons import EXTENSION_FIELD, openai_finish_reason
from server.api.formats import FinalToken, final_tokens
from server.api.streaming import sse_data
from server.service import GenerationService, ScoredToken

JsonObject = dict[str, Any]


class OpenAIRenderer:
    """The shared shape of an OpenAI answer; subclasses say how a choice carries its text."""

    id_prefix: ClassVar[str]
    endpoint: ClassVar[str]
    object_name: ClassVar[str]
    chunk_object_name: ClassVar[str]

    def __init__(
        self,
        model: str,
        service: GenerationService,
        prompts: list[Prompt],
        top_n: int | None,
        include_usage: bool,
        echo: bool = False,
    ) -> None:
        self.model, self.service, self.prompts = model, service, prompts
        self.top_n = top_n
        """Alternatives per token with `logprobs` (0: the chosen token only); None: no logprobs."""
        self.include_usage = include_usage
        self.echo = echo
        """A choice's text starts with its prompt (completions' `echo`)."""
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    # -- what a protocol says ------------------------------------------------------------------

    def format_logprobs(
        self, scored: list[ScoredToken], texts: list[str], offset: int
    ) -> JsonObject:
        raise NotImplementedError

    def answer_text(self, done: DoneEvent, prompt: Prompt) -> JsonObject:
        """The fields that carry a non-streaming choice's text."""
        raise NotImplementedError

    def delta(self, text: str | None) -> JsonObject:
        """The fields that carry a streamed piece of text (None: the closing chunk's)."""
        raise NotImplementedError

    async def opening_frames(self, index: int) -> AsyncIterator[ServerSentEvent]:
        """What a choice's stream starts with, before its first token."""
        return
        yield

    # -- logprobs ------------------------------------------------------------------------------

    async def _scored(
        self, prompt: Prompt, generated: list[int], start: int, streaming: bool = False
    ) -> list[ScoredToken]:
        """A scoring forward; a stream's own request already holds a place for it."""
        assert self.top_n is not None
        return await self.service.score(prompt.ids + generated, start, self.top_n, streaming)

    async def logprobs(
        self, prompt: Prompt, tokens: list[FinalToken], streaming: bool = False
    ) -> JsonObject | None:
        """The `logprobs` of a choice's final `tokens`, with the prompt's when it is shown."""
        if self.top_n is None:
            return None
        texts = [token.text for token in tokens]
        scored = await self._generated_scores(prompt, [], tokens, streaming)
        if self.echo:  # the prompt's own positions: a forward over the prompt alone
            scored = await self._scored(prompt, [], 0, streaming) + scored
            texts = [self.service.token_text(token) for token in prompt.ids] + texts
        return self.format_logprobs(scored, texts, 0)  # offsets into the choice's text

    async def _generated_scores(
        self, prompt: Prompt, before: list[int], tokens: list[FinalToken], streaming: bool = False
    ) -> list[ScoredToken]:
        """The scores of generated `tokens` that follow `before`: each from its own step where
        it carries one, else from a forward over prompt + `before` + `tokens`."""
        if all(token.score is not None for token in tokens):
            return [
                ScoredToken(token.id, token.score.logprob, list(token.score.top))
                for token in tokens
                if token.score is not None
            ]
        ids = before + [token.id for token in tokens]
        return await self._scored(prompt, ids, len(prompt.ids) + len(before), streaming)

    async def _streamed_logprobs(
        self, index: int, shown: list[TokenEvent], event: TokenEvent
    ) -> JsonObject:
        """The logprobs of one streamed token: its own step's, or (unscored, `keep` mode) a
        forward over prompt + the tokens shown so far."""
        prompt = self.prompts[index]
        token = FinalToken(event.id, event.text, event.logprob, event.score)
        scored = await self._generated_scores(prompt, [t.id for t in shown], [token], True)
        offset = (len(prompt.text) if self.echo else 0) + sum(len(token.text) for token in shown)
        return self.format_logprobs(scored, [event.text], offset)

    # -- non-streaming -------------------------------------------------------------------------

    async def answer(
        self, events: dict[int, list[Event]], finals: dict[int, DoneEvent]
    ) -> JsonObject:
        choices = []
        for index in sorted(finals):
            done, prompt = finals[index], self.prompts[index]
            choice: JsonObject = {"index": index, **finish_fields(done)}
            logprobs = await self.logprobs(prompt, final_tokens(events[index]))
            choices.append({**choice, **self.answer_text(done, prompt), "logprobs": logprobs})
        dones = [finals[index] for index in sorted(finals)]
        return {
            **self.envelope(),
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
            async for frame in self.opening_frames(index):
                yield frame
        async for index, event in choices:
            if isinstance(event, TokenEvent):
                logprobs = None
                if self.top_n is not None:
                    logprobs = await self._streamed_logprobs(index, shown[index], event)
                shown[index].append(event)
                yield sse_data(self.chunk(index, event.text, logprobs=logprobs))
            elif isinstance(event, BacktrackEvent):
                shown[index].pop()
                yield sse_data(self.chunk(index, "", backtrack=event_payload(event)))
            elif isinstance(event, DoneEvent):
                if event.finish_reason == "error":  # the SDK raises APIError on this chunk
                    yield sse_data(generation_failed().openai_body().model_dump())
                    yield sse_data("[DONE]")
                    return  # the other choices are cancelled as the stream ends
                yield sse_data(self.chunk(index, None, **finish_fields(event)))
        if self.include_usage:
            dones = [choices.finals[index] for index in sorted(choices.finals)]
            usage_chunk = {"choices": [], "usage": usage(dones, self._prompt_tokens())}
            yield sse_data({**self.envelope(chunk=True), **usage_chunk})
        yield sse_data("[DONE]")

    def chunk(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None = None,
        logprobs: JsonObject | None = None,
        **extra: Any,
    ) -> JsonObject:
        choice = {"index": index, "finish_reason": finish_reason, **extra}
        choice.update(self.delta(text), logprobs=logprobs)
        return {**self.envelope(chunk=True), "choices": [choice]}

    def envelope(self, chunk: bool = False) -> JsonObject:
        kind = self.chunk_object_name if chunk else self.object_name
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def generation_failed() -> ApiError:
    """A failed choice: the whole answer is this error (a 500, or the stream's last chunk)."""
    return ApiError(500, "generation failed; see the server log", "server_error")


def finish_fields(done: DoneEvent) -> JsonObject:
    """OpenAI's finish reason, ours beside it (`server.api.finish_reasons`), and whether the
    deletion budget ran out."""
    return {
        "finish_reason": openai_finish_reason(done.finish_reason),
        EXTENSION_FIELD: done.finish_reason,
        "backtrack_budget_exhausted": done.backtrack_budget_exhausted,
    }


def usage(dones: list[DoneEvent], prompt_tokens: int) -> dict[str, int]:
    completion = sum(done.generated_tokens for done in dones)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
