"""The engine: one worker thread owns the model and steps every running request.

    API (asyncio)                          worker thread
    submit(request) -> Stream  --------->  waiting queue --admit--> running list
    async for events in stream  <--------  round-robin: one `Sequence.step()` each per turn
    stream.cancel()             -- flag -> checked once per step: cancel, free the cache

Requests join and leave between steps, so concurrent requests interleave. The API layer only
sees `submit`, `Stream` and `cancel`; replacing the round-robin loop by one batched forward per
step would change nothing above this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from backtrack.decoder import Sequence
from backtrack.events import DoneEvent, Event, TokenEvent
from backtrack.params import GenerationParams
from server.loading import ServedModel
from server.metrics import Metrics

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every decoding slot and every queue place is taken; answer 429 at once."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new requests; answer 503."""


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


class Stream:
    """One request's events, read by the asyncio side; `cancel()` stops it within one step."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wake: threading.Condition) -> None:
        self._loop = loop
        self._wake = wake
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.cancel_requested = False
        self.done: DoneEvent | None = None

    def cancel(self) -> None:
        """Ask the worker to end this request (client gone); safe to call at any time."""
        self.cancel_requested = True
        with self._wake:
            self._wake.notify()

    def publish(self, events: list[Event]) -> None:
        """Called by the worker thread: hand events to the event loop."""
        # A closed event loop means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, events)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while self.done is None:
            for event in await self._queue.get():
                if isinstance(event, DoneEvent):
                    self.done = event
                yield event


@dataclass
class _Job:
    request: GenerationRequest
    stream: Stream
    arrival: float = field(default_factory=time.monotonic)
    sequence: Sequence | None = None
    last_token_at: float | None = None
    backtracks: int = 0
    sampled_tokens: int = 0
    cached_tokens: int = 0

    @property
    def deadline(self) -> float:
        timeout = self.request.timeout
        return float("inf") if timeout is None else self.arrival + timeout


class Engine:
    """Owns the model; schedules requests onto one worker thread."""

    def __init__(
        self,
        served: ServedModel,
        metrics: Metrics,
        max_running: int,
        max_waiting: int,
    ) -> None:
        self.served = served
        self.metrics = metrics
        self.max_running = max_running
        self.max_waiting = max_waiting
        self._wake = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._running: list[_Job] = []
        self._stop = False
        self._shutdown_deadline: float | None = None
        self._thread = threading.Thread(target=self._work, name="engine", daemon=True)

    # -- the interface the API uses ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Stream:
        """Queue a request; raises QueueFull or ShuttingDown at once instead of waiting."""
        stream = Stream(asyncio.get_running_loop(), self._wake)
        with self._wake:
            if self._shutdown_deadline is not None:
                raise ShuttingDown("the server is shutting down")
            if len(self._running) + len(self._waiting) >= self.max_running + self.max_waiting:
                raise QueueFull(
                    f"{len(self._running)} requests running and {len(self._waiting)} waiting"
                )
            self._waiting.append(_Job(request, stream))
            self.metrics.queue_size.set(len(self._waiting))
            self._wake.notify()
        return stream

    def begin_shutdown(self, grace: float) -> None:
        """Refuse new requests; requests still running after `grace` seconds end (`shutdown`)."""
        with self._wake:
            self._shutdown_deadline = time.monotonic() + grace
            self._wake.notify()

    def stop(self) -> None:
        """End every request now and stop the worker thread."""
        with self._wake:
            self._shutdown_deadline = time.monotonic()
            self._wake.notify()
        deadline = time.monotonic() + 5
        while (self._running or self._waiting) and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=5)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self._waiting and not self._running:
                    self._wake.wait()
                if self._stop:
                    return
                admitted = self._admit()
            for job in admitted:
                self._start(job)
            for job in list(self._running):
                if job.sequence is not None:
                    self._advance(job)

    def _admit(self) -> list[_Job]:
        """Move waiting jobs into free slots (called with the lock held).

        Jobs cancelled or out of time while waiting are taken too, so `_start` ends them now
        rather than when a slot frees.
        """
        admitted = [job for job in self._waiting if self._end_reason(job) is not None]
        for job in admitted:
            self._waiting.remove(job)
        while self._waiting and len(self._running) + len(admitted) < self.max_running:
            admitted.append(self._waiting.popleft())
        self._running.extend(admitted)
        self.metrics.queue_size.set(len(self._waiting))
        self.metrics.running_requests.set(len(self._running))
        return admitted

    def _start(self, job: _Job) -> None:
        """Prefill a job's prompt; a job cancelled or out of time while waiting ends here."""
        reason = self._end_reason(job)
        if reason is not None:
            self._finish_unstarted(job, reason)
            return
        request, served = job.request, self.served
        try:
            job.sequence = Sequence(
                served.model,
                served.tokenizer,
                served.backtrack_id,
                request.prompt_ids,
                request.params,
                hold_back_deletable=request.hold_back_deletable,
            )
        except Exception:
            log.exception("prefill failed")
            self._finish_unstarted(job, "error")
            return
        self.metrics.prompt_tokens.inc(len(request.prompt_ids))
        self._record(job, job.sequence, [])

    def _advance(self, job: _Job) -> None:
        """One step of one job, or its end when it was cancelled or ran out of time."""
        sequence = job.sequence
        assert sequence is not None
        reason = self._end_reason(job)
        try:
            events = sequence.step() if reason is None else sequence.cancel(reason)
        except Exception:
            log.exception("decoding step failed")
            events = sequence.cancel("error")
        self._record(job, sequence, events)
        if sequence.finished:
            self._leave(job)  # before publishing: a client that sees `done` sees the slot free
        job.stream.publish(events)

    def _leave(self, job: _Job) -> None:
        with self._wake:
            self._running.remove(job)
            self.metrics.running_requests.set(len(self._running))

    def _end_reason(self, job: _Job) -> str | None:
        now = time.monotonic()
        if job.stream.cancel_requested:
            return "cancelled"
        if now >= job.deadline:
            return "timeout"
        if self._shutdown_deadline is not None and now >= self._shutdown_deadline:
            return "shutdown"
        return None

    def _finish_unstarted(self, job: _Job, reason: str) -> None:
        done = DoneEvent(
            generated_text="",
            finish_reason=reason,
            generated_tokens=0,
            backtracks=0,
            sampled_tokens=0,
            seed=job.request.params.seed,
            prompt_tokens=len(job.request.prompt_ids),
        )
        self._record(job, None, [done])
        self._leave(job)
        job.stream.publish([done])

    # -- metrics ---------------------------------------------------------------------------------

    def _record(self, job: _Job, sequence: Sequence | None, events: list[Event]) -> None:
        """Count what one step did; backtracks hidden by hold-back count too."""
        m = self.metrics
        if sequence is not None:
            counters = sequence.counters
            m.backtracks.inc(counters.backtracks - job.backtracks)
            m.deleted_tokens.inc(counters.backtracks - job.backtracks)
            m.generated_tokens.inc(counters.sampled_tokens - job.sampled_tokens)
            job.backtracks, job.sampled_tokens = counters.backtracks, counters.sampled_tokens
            cached = len(sequence.context_ids) if sequence.cache is not None else 0
            m.kv_cache_tokens.inc(cached - job.cached_tokens)
            job.cached_tokens = cached
        now = time.monotonic()
        for event in events:
            if isinstance(event, TokenEvent):
                if job.last_token_at is None:
                    m.time_to_first_token.observe(now - job.arrival)
                else:
                    m.inter_token_latency.observe(now - job.last_token_at)
                job.last_token_at = now
            elif isinstance(event, DoneEvent):
                m.requests.labels(job.request.endpoint, event.finish_reason).inc()
                m.request_backtracks.observe(event.backtracks)
                m.e2e_request_latency.observe(now - job.arrival)
