"""A request as the engine holds it: what was asked, its stream, its reservation, its metrics.

`GenerationRequest` is what the service submits; `Job` is the engine's record of it while it
waits or runs (its KV reservation, its row, when its last token was seen).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backtrack.events import DoneEvent, Event, TokenEvent
from backtrack.params import GenerationParams
from backtrack.row import Row
from server.bridge import Stream
from server.metrics import Metrics


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: GenerationParams
    endpoint: str
    """Label for the metrics: which route asked."""
    hold_back_deletable: bool = False
    """Never emit a token a later backtrack could delete (for clients that cannot erase)."""
    timeout: float | None = None
    """Seconds from arrival before the request ends with finish_reason `timeout`."""
    score_top: int | None = None
    """Score each token from its own step, with this many alternatives (OpenAI `logprobs`)."""

    def reserved_tokens(self, max_context: int) -> int:
        """The most KV entries this request can hold: prompt + visible (+ BTs and deleted tokens
        that stay in the context in keep mode), never more than the model's context."""
        growth = self.params.max_new_tokens
        if self.params.mode == "keep":
            growth += 2 * self.params.max_backtracks
        return min(len(self.prompt_ids) + growth, max_context)


@dataclass
class Job:
    """A request inside the engine: its stream, its KV reservation, its row once started."""

    request: GenerationRequest
    stream: Stream
    reserved_tokens: int
    arrival: float = field(default_factory=time.monotonic)
    row: Row | None = None
    last_token_at: float | None = None
    holds_reservation: bool = False
    """Its `reserved_tokens` count in the engine's total (not for a job ended while waiting)."""

    @property
    def deadline(self) -> float:
        timeout = self.request.timeout
        return float("inf") if timeout is None else self.arrival + timeout

    def record(self, m: Metrics, events: list[Event], on_done: OnDone | None = None) -> None:
        """Latencies and request counts from the events a client is about to see; `on_done`
        gets the finished job (the event log)."""
        now = time.monotonic()
        for event in events:
            if isinstance(event, TokenEvent):
                if self.last_token_at is None:
                    m.first_token(now - self.arrival)
                else:
                    m.next_token(now - self.last_token_at)
                self.last_token_at = now
            elif isinstance(event, DoneEvent):
                reason, backtracks = event.finish_reason, event.backtracks
                m.request_finished(self.request.endpoint, reason, backtracks, now - self.arrival)
                if on_done is not None:
                    on_done(self, event)


OnDone = Callable[[Job, DoneEvent], None]


def nothing_kept(request: GenerationRequest, reason: str) -> DoneEvent:
    """A `done` for a request that produced nothing its client may keep."""
    return DoneEvent(
        generated_text="",
        finish_reason=reason,
        generated_tokens=0,
        backtracks=0,
        sampled_tokens=0,
        seed=request.params.seed,
        prompt_tokens=len(request.prompt_ids),
    )
