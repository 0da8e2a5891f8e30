"""`/v1/chat/completions` answers: an assistant message per choice, `role` first in a stream,
and chat `logprobs` (`content`: token, logprob, bytes, top_logprobs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import ServerSentEvent

from backtrack.events import DoneEvent
from server.api.choices import Prompt
from server.api.openai_render import JsonObject, OpenAIRenderer
from server.api.streaming import sse_data
from server.service import ScoredToken


class ChatRenderer(OpenAIRenderer):
    id_prefix = "chatcmpl"
    endpoint = "/v1/chat/completions"
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def answer_text(self, done: DoneEvent, prompt: Prompt) -> JsonObject:
        return {"message": {"role": "assistant", "content": done.generated_text}}

    def delta(self, text: str | None) -> JsonObject:
        return {"delta": {} if text is None else {"content": text}}

    async def opening_frames(self, index: int) -> AsyncIterator[ServerSentEvent]:
        delta = {"role": "assistant", "content": ""}
        choice = {"index": index, "finish_reason": None, "delta": delta, "logprobs": None}
        yield sse_data({**self.envelope(chunk=True), "choices": [choice]})

    def format_logprobs(
        self, scored: list[ScoredToken], texts: list[str], offset: int
    ) -> JsonObject:
        content = []
        for token, text in zip(scored, texts, strict=True):
            top = [
                _chat_entry(self.service.token_text(i), lp)
                for i, lp in token.top[: self.top_n or 0]
            ]
            content.append({**_chat_entry(text, token.logprob or 0.0), "top_logprobs": top})
        return {"content": content}


def _chat_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
