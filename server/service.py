"""Between the routes and the engine: prompts to ids within the limits, requests to streams.

Prompts are measured in characters before they are tokenised, and tokenised (chat template
included) on one helper thread, so a large or slow prompt never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import TypeVar

import torch

from backtrack.detokenize import decoded
from backtrack.params import GenerationParams, InvalidParameter
from backtrack.sampling import token_scores
from server.bridge import Stream
from server.engine import Engine
from server.jobs import GenerationRequest
from server.limits import Limits
from server.loading import ServedModel
from server.special_text import refuse_special_tokens, special_token_texts

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ScoredToken:
    """One token's log-probability given the tokens before it, and the most likely ones there."""

    id: int
    logprob: float | None
    """None for the first token of a sequence: nothing precedes it."""
    top: list[tuple[int, float]]
    """(id, logprob) of the most likely tokens at that position, best first."""


def score_tokens(served: ServedModel, ids: list[int], start: int, top_n: int) -> list[ScoredToken]:
    """Log-probabilities of `ids[start:]`, each given the ids before it, from one forward over
    `ids` without a KV cache: the model's own (untempered, unpenalised) distribution, as vLLM
    reports logprobs. Runs on the engine's worker thread (`Engine.call`), which owns the model."""
    first = max(start, 1)
    scored = [ScoredToken(ids[0], None, [])] if start == 0 else []
    if first >= len(ids):
        return scored
    with torch.inference_mode():
        tensor = torch.tensor([ids], device=served.device)
        logits = served.model(input_ids=tensor, use_cache=False).logits[0, first - 1 : -1]
        scores = token_scores(logits, tensor[0, first:], top_n)
    for token, score in zip(ids[first:], scores, strict=True):
        scored.append(ScoredToken(token, score.logprob, list(score.top)))
    return scored


class GenerationService:
    def __init__(
        self, served: ServedModel, engine: Engine, limits: Limits, request_timeout: float
    ) -> None:
        self.served, self.engine, self.limits = served, engine, limits
        self.request_timeout = request_timeout
        self.limits = replace(
            limits,
            vocab_size=served.vocab_size,
            model_id=served.model_id,
            max_prompt_tokens=self.input_token_limit,
        )
        # One thread: tokenisation stays off the event loop and never runs concurrently with
        # itself (a Rust tokenizer borrowed twice raises "Already borrowed").
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self._token_texts: dict[int, str] = {}

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids TGI reports with `special: true` (EOS, pad, BOS, the backtrack token...)."""
        return frozenset(self.served.tokenizer.all_special_ids) | {self.served.backtrack_id}

    @cached_property
    def special_texts(self) -> list[str]:
        """The special tokens' texts a prompt may not hold when they are refused."""
        return special_token_texts(self.served.tokenizer, self.served.backtrack_token)

    def _check_special(self, texts: dict[str, str]) -> None:
        """422 for a special token written in user text, when `special_tokens_in_prompts` is
        `refuse` (`server.special_text`)."""
        if self.served.special_tokens_in_prompts == "refuse":
            refuse_special_tokens(texts, self.special_texts)

    async def score(
        self, ids: list[int], start: int, top_n: int, holds_place: bool = False
    ) -> list[ScoredToken]:
        """`score_tokens` on the engine's worker thread, between two decoding steps; in a queue
        place of its own unless the caller's stream `holds_place` (`Engine.call`)."""
        scoring = partial(score_tokens, self.served, ids, start, top_n)
        return await self.engine.call(scoring, holds_place)

    def check_token_ids(self, ids: list[int], field: str) -> list[int]:
        """A token-id prompt, used as given (nothing added): 422 for an id the model cannot
        embed, before it reaches the batch (where it would fail every row's step)."""
        size = self.served.vocab_size
        for token in ids:
            if not 0 <= token < size:
                raise InvalidParameter(
                    field, f"holds token id {token}; valid ids are 0 to {size - 1}"
                )
        return self._within_limits(ids, field)

    def decode(self, ids: list[int]) -> str:
        return decoded(self.served.tokenizer, ids)

    def token_text(self, token: int) -> str:
        """One token's text, cached: logprobs name every scored token and alternative, and an
        echoed prompt's are rendered on the event loop."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = decoded(self.served.tokenizer, [token])
        return text

    @property
    def input_token_limit(self) -> int:
        return min(self.limits.max_input_tokens, self.served.max_context - 1)

    async def encode_completion(self, text: str, field: str) -> list[int]:
        """A completion route's prompt as the model was trained on it; 422 when empty or long."""
        self._check_chars(len(text), field)
        self._check_special({field: text})
        ids = await self._off_loop(self.served.prompts.completion, text)
        return self._within_limits(ids, field)

    async def encode_chat(self, messages: list[dict[str, str]], field: str) -> list[int]:
        """A conversation as the model was trained on prompts; 422 when empty, long, or refused
        by the chat template (roles that must alternate, a role it does not know)."""
        self._check_chars(sum(len(m["content"]) for m in messages), field)
        self._check_special({f"{field}.{i}.content": m["content"] for i, m in enumerate(messages)})
        try:
            ids = await self._off_loop(self.served.prompts.chat, messages)
        except Exception as error:  # jinja2 TemplateError, ValueError, ... all mean bad input
            raise InvalidParameter(field, f"refused by the chat template: {error}") from None
        return self._within_limits(ids, field)

    async def _off_loop(self, function: Callable[[T], R], argument: T) -> R:
        return await asyncio.get_running_loop().run_in_executor(
            self._tokenizing, function, argument
        )

    def _check_chars(self, chars: int, field: str) -> None:
        if chars > self.limits.max_input_chars:
            raise InvalidParameter(
                field,
                f"is {chars} characters long; the limit is {self.limits.max_input_chars} "
                "(max_input_chars)",
            )

    def _within_limits(self, ids: list[int], field: str) -> list[int]:
        if not ids:
            raise InvalidParameter(field, "must not be empty")
        limit = self.input_token_limit
        if len(ids) > limit:
            raise InvalidParameter(
                field, f"is {len(ids)} tokens long; the limit is {limit} input tokens"
            )
        return ids

    def submit(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        endpoint: str,
        hold_back_deletable: bool,
        score_top: int | None = None,
    ) -> Stream:
        """Queue the request; QueueFull / ShuttingDown propagate (429 / 503). With `score_top`,
        each token event carries its score from the step that drew it (`TokenEvent.score`)."""
        request = GenerationRequest(
            prompt_ids=prompt_ids,
            params=params,
            endpoint=endpoint,
            hold_back_deletable=hold_back_deletable,
            timeout=self.request_timeout,
            score_top=score_top,
        )
        return self.engine.submit(request)

    def close(self) -> None:
        self._tokenizing.shutdown(wait=False, cancel_futures=True)
