"""Between the routes and the engine: prompts to ids within the limits, requests to streams.

Prompts are measured in characters before they are tokenised, and tokenised (chat template
included) on one helper thread, so a large or slow prompt never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from backtrack.params import GenerationParams, InvalidParameter
from server.engine import Engine, GenerationRequest, Stream
from server.loading import ServedModel
from server.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Limits:
    """What this server accepts per request (from the settings)."""

    max_input_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int
    max_input_chars: int = 65536
    max_stop_sequences: int = 4
    max_stop_sequence_chars: int = 256
    max_backtracks: int = 64
    max_backtrack_depth: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_input_tokens=settings.max_input_tokens,
            max_new_tokens=settings.max_new_tokens,
            default_max_new_tokens=settings.default_max_new_tokens,
            max_input_chars=settings.max_input_chars,
            max_stop_sequences=settings.max_stop_sequences,
            max_stop_sequence_chars=settings.max_stop_sequence_chars,
            max_backtracks=settings.max_backtracks,
            max_backtrack_depth=settings.max_backtrack_depth,
        )


class GenerationService:
    def __init__(
        self, served: ServedModel, engine: Engine, limits: Limits, request_timeout: float
    ) -> None:
        self.served, self.engine, self.limits = served, engine, limits
        self.request_timeout = request_timeout
        # One thread: tokenisation stays off the event loop and never runs concurrently with
        # itself (a Rust tokenizer borrowed twice raises "Already borrowed").
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="tokenize")

    @property
    def input_token_limit(self) -> int:
        return min(self.limits.max_input_tokens, self.served.max_context - 1)

    async def encode_completion(self, text: str, field: str) -> list[int]:
        """A completion route's prompt as the model was trained on it; 422 when empty or long."""
        self._check_chars(len(text), field)
        ids = await self._off_loop(self.served.prompts.completion, text)
        return self._within_limits(ids, field)

    async def encode_chat(self, messages: list[dict[str, str]], field: str) -> list[int]:
        """A conversation as the model was trained on prompts; 422 when empty, long, or refused
        by the chat template (roles that must alternate, a role it does not know)."""
        self._check_chars(sum(len(m["content"]) for m in messages), field)
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
    ) -> Stream:
        """Queue the request; QueueFull / ShuttingDown propagate (429 / 503)."""
        request = GenerationRequest(
            prompt_ids=prompt_ids,
            params=params,
            endpoint=endpoint,
            hold_back_deletable=hold_back_deletable,
            timeout=self.request_timeout,
        )
        return self.engine.submit(request)

    def close(self) -> None:
        self._tokenizing.shutdown(wait=False, cancel_futures=True)
