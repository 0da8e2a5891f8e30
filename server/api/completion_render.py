"""`/v1/completions` answers: `text_completion` choices, with `echo` and OpenAI's legacy
`logprobs` (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from sse_starlette import ServerSentEvent

from backtrack.events import DoneEvent
from server.api.choices import Prompt
from server.api.openai_render import JsonObject, OpenAIRenderer
from server.api.streaming import sse_data
from server.service import ScoredToken


class CompletionRenderer(OpenAIRenderer):
    id_prefix = "cmpl"
    endpoint = "/v1/completions"
    object_name = chunk_object_name = "text_completion"

    def answer_text(self, done: DoneEvent, prompt: Prompt) -> JsonObject:
        return {"text": prompt.text + done.generated_text if self.echo else done.generated_text}

    def delta(self, text: str | None) -> JsonObject:
        return {"text": text or ""}

    async def opening_frames(self, index: int) -> AsyncIterator[ServerSentEvent]:
        if self.echo:  # the prompt comes first, as its own chunk
            prompt = self.prompts[index]
            logprobs = await self.logprobs(prompt, [], streaming=True)
            yield sse_data(self.chunk(index, prompt.text, logprobs=logprobs))

    def format_logprobs(
        self, scored: list[ScoredToken], texts: list[str], offset: int
    ) -> JsonObject:
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        top_logprobs: list[dict[str, float] | None] = []
        offsets: list[int] = []
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
