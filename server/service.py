"""Between the routes and the engine: prompts to ids within the limits, requests to streams."""

from __future__ import annotations

from dataclasses import dataclass

from backtrack.params import GenerationParams, InvalidParameter
from server.engine import Engine, GenerationRequest, Stream
from server.loading import ServedModel


@dataclass(frozen=True)
class Limits:
    """What this server accepts per request (from the settings)."""

    max_input_tokens: int
    max_new_tokens: int
    default_max_new_tokens: int


class GenerationService:
    def __init__(
        self, served: ServedModel, engine: Engine, limits: Limits, request_timeout: float
    ) -> None:
        self.served, self.engine, self.limits = served, engine, limits
        self.request_timeout = request_timeout

    def encode_completion(self, text: str, field: str) -> list[int]:
        """A completion route's prompt as the model was trained on it; 422 when empty or long."""
        return self._within_limits(self.served.prompts.completion(text), field)

    def encode_chat(self, messages: list[dict[str, str]], field: str) -> list[int]:
        """A conversation as the model was trained on prompts; 422 when empty or long."""
        return self._within_limits(self.served.prompts.chat(messages), field)

    def _within_limits(self, ids: list[int], field: str) -> list[int]:
        if not ids:
            raise InvalidParameter(field, "must not be empty")
        limit = min(self.limits.max_input_tokens, self.served.max_context - 1)
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
