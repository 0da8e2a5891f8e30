"""The engine: one worker thread owns the model and steps every running request in one batch.

    API (asyncio)                          worker thread
    submit(request) -> Stream  --------->  waiting queue --admit (slots, KV budget)--> batch
    async for events in stream  <--------  one `BatchDecoder.step()` per turn: one forward for
                                           every running row, chunked prefill of joining rows
    stream.cancel()             -- flag -> checked once per step: the row leaves, its KV is freed

Requests join and leave between steps. Admission is by request count (`max_running`) and by a
KV budget in tokens (`max_batch_total_tokens`): a request reserves its prompt plus the most its
context can grow to, so an admitted request never runs out of room. The API layer only sees
`submit` (through the service) and the stream bridge (`server.bridge`): `Stream` and `cancel`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from backtrack.events import DoneEvent, Event
from backtrack.params import InvalidParameter
from backtrack.row import Row
from server.bridge import EngineDown, QueueFull, ShuttingDown, Stream, publish_all
from server.calls import WorkerCalls
from server.jobs import GenerationRequest, Job, OnDone, nothing_kept
from server.loading import ServedModel
from server.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")
DEVICE_POISONED = ("CUDA error", "device-side assert", "illegal memory access")
"""Messages of a device error after which every later kernel fails: the process must restart."""


class Engine:
    """Owns the model; schedules requests onto one worker thread that decodes them in a batch."""

    def __init__(
        self,
        served: ServedModel,
        metrics: Metrics,
        max_running: int,
        max_waiting: int,
        max_batch_total_tokens: int = 1 << 20,
        max_batch_prefill_tokens: int = 512,
        stall_timeout: float = 60.0,
        max_faults_in_a_row: int = 3,
        on_fatal: Callable[[str], None] | None = None,
        on_done: OnDone | None = None,
    ) -> None:
        self.served = served
        self.stall_timeout = stall_timeout
        self.metrics = metrics
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_batch_total_tokens = max_batch_total_tokens
        self.decoder = served.new_decoder(max_batch_prefill_tokens)
        self._wake = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._by_row: dict[Row, Job] = {}
        self._reserved = 0
        self._stop = False
        self._shutdown_deadline: float | None = None
        self._busy_since: float | None = None
        self.max_faults_in_a_row, self.on_fatal = max_faults_in_a_row, on_fatal
        self.on_done = on_done
        self._faults_in_a_row = 0
        self._broken: str | None = None
        self._calls = WorkerCalls()
        self._thread = threading.Thread(target=self._work, name="engine", daemon=True)
        metrics.set_kv_budget(max_batch_total_tokens)

    # -- the interface the API uses ------------------------------------------------------------

    def warm_up(self) -> bool:
        """Compile the decode step before the first request; True if it is compiled."""
        return self.decoder.warm_up(self.max_running)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Stream:
        """Queue a request; raises QueueFull or ShuttingDown at once instead of waiting. A
        request that could never fit the KV budget is refused (InvalidParameter, 422)."""
        reserved = request.reserved_tokens(self.served.max_context)
        if reserved > self.max_batch_total_tokens:
            raise InvalidParameter(
                "max_new_tokens",
                f"with the prompt needs {reserved} tokens of KV cache; "
                f"the server holds at most {self.max_batch_total_tokens} (max_batch_total_tokens)",
            )
        stream = self._stream_for(request)
        with self._wake:
            if not self._thread.is_alive() or self._broken:
                raise EngineDown("the engine worker stopped; this replica needs a restart")
            if self._shutdown_deadline is not None:
                raise ShuttingDown("the server is shutting down")
            if self._places_taken() >= self.max_running + self.max_waiting:
                raise self._full()
            self._waiting.append(Job(request, stream, reserved))
            self._count_waiting()
            self._wake.notify()
        return stream

    def _stream_for(self, request: GenerationRequest) -> Stream:
        """A stream that gives up by itself `stall_timeout` seconds after the request's own
        timeout, should the worker that enforces that timeout be wedged."""
        give_up = None if request.timeout is None else request.timeout + self.stall_timeout
        fallback = nothing_kept(request, "timeout")
        return Stream(asyncio.get_running_loop(), self._wake, give_up, fallback)

    def call(self, function: Callable[[], T], holds_place: bool = False) -> asyncio.Future[T]:
        """Run `function` (scoring for `logprobs`) on the worker between two steps, in a queue
        place (`server.calls`) unless its caller's running request `holds_place`; a drain still
        runs it, so admitted requests get their scores."""
        with self._wake:
            if not self._thread.is_alive() or self._broken:
                raise EngineDown("the engine worker stopped; this replica needs a restart")
            if not holds_place and self._places_taken() >= self.max_running + self.max_waiting:
                raise self._full()
            future = self._calls.add(function)
            self._count_waiting()
            self._wake.notify()
        return future

    def _places_taken(self) -> int:
        return len(self._running) + len(self._waiting) + len(self._calls)

    def _full(self) -> QueueFull:
        return QueueFull(
            f"{len(self._running)} requests running and {len(self._waiting)} waiting, "
            f"{len(self._calls)} scoring: every place is taken (max_concurrent_requests "
            f"{self.max_running} + max_queue_size {self.max_waiting})"
        )

    def _run_calls(self) -> None:
        """Scoring in its fair share of the worker's time (`server.calls`); all of it when
        nothing decodes."""
        run = self._calls.run_due if self.decoder.rows else self._calls.run_all
        run(self._wake, self._count_waiting)

    def _count_waiting(self) -> None:
        self.metrics.set_waiting(len(self._waiting) + len(self._calls))

    def begin_shutdown(self, grace: float) -> None:
        """Refuse new requests; requests still running after `grace` seconds end (`shutdown`).
        A second call (a second SIGTERM) never moves the deadline later."""
        with self._wake:
            deadline = time.monotonic() + grace
            if self._shutdown_deadline is None or deadline < self._shutdown_deadline:
                self._shutdown_deadline = deadline
            self._wake.notify()

    def problem(self) -> str | None:
        """Why this engine cannot serve (for /health), or None when it can."""
        if not self._thread.is_alive():
            return "the engine worker stopped"
        if self._broken:
            return self._broken
        busy_since = self._busy_since
        if busy_since is not None and time.monotonic() - busy_since > self.stall_timeout:
            return f"the engine worker is stuck in one step for over {self.stall_timeout:g} s"
        return None

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
    def shutdown_deadline(self) -> float | None:
        """When running requests end (`shutdown`), on the monotonic clock; None until SIGTERM."""
        return self._shutdown_deadline

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        """The worker loop. A fault in a turn ends the requests it touched (`error`) and the
        loop goes on; should the thread die anyway, every waiting request is ended."""
        try:
            while self._wait_for_work():
                self._busy_since = time.monotonic()
                try:
                    self._turn()
                    self._faults_in_a_row = 0
                except Exception as error:
                    log.exception("engine turn failed; ending the running requests")
                    self._after_fault(error)
                self._busy_since = None
        finally:
            self._busy_since = None
            if not self._stop:
                log.error("the engine worker stopped unexpectedly")
                self._fail_everything()

    def _wait_for_work(self) -> bool:
        """Sleep until there is work; False once `stop()` asked the worker to end."""
        with self._wake:
            while not self._stop and not self._waiting and not self._running and not self._calls:
                self._wake.wait()
            return not self._stop

    def _turn(self) -> None:
        """Run queued calls, admit, end the jobs that must end, step the batch."""
        if self._calls:
            self._run_calls()
        with self._wake:
            admitted = self._admit()
        for job in admitted:
            self._start(job)
        for job in list(self._running):
            reason = self._end_reason(job)
            if reason is not None and job.row is not None:
                self._guarded(job, partial(self._end, job, reason))
        if self.decoder.rows:
            self._step()

    def _end(self, job: Job, reason: str) -> None:
        assert job.row is not None
        job.stream.publish(self._account(job, self.decoder.cancel(job.row, reason)))

    def _guarded(self, job: Job, action: Callable[[], T]) -> T | None:
        """Run one job's bookkeeping; should it fail, that job alone ends with `error`."""
        try:
            return action()
        except Exception:
            log.exception("request bookkeeping failed; ending the request with an error")
            self._fail(job)
            return None

    def _after_fault(self, error: Exception) -> None:
        """End the running requests; a fault that repeats (turn after turn, nothing served)
        also ends the waiting ones and marks the engine broken, so /health asks for a restart
        instead of the worker spinning on it. A device error that poisons the context breaks
        it at once: no later kernel can succeed."""
        self._faults_in_a_row += 1
        self._fail_running()
        poisoned = any(sign in str(error) for sign in DEVICE_POISONED)
        if poisoned:
            self._broken = f"the device failed and cannot recover: {error}"
        elif self._faults_in_a_row >= self.max_faults_in_a_row:
            self._broken = f"the engine worker failed {self._faults_in_a_row} turns in a row"
        if self._broken:
            log.critical("engine broken (%s); /health answers 503 until a restart", self._broken)
            self._fail_everything()
        if poisoned and self.on_fatal is not None:
            self.on_fatal(self._broken or "")  # the process ends, so its orchestrator restarts it

    def _fail_running(self) -> None:
        for job in list(self._running):
            self._fail(job)
        for row in list(self.decoder.rows):  # rows no job owns any more: free their KV
            with contextlib.suppress(Exception):
                self.decoder.cancel(row, "error")

    def _fail_everything(self) -> None:
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
            self._count_waiting()
        for job in [*waiting, *self._running]:
            with contextlib.suppress(Exception):
                self._fail(job)

    def _fail(self, job: Job) -> None:
        """End a job with `error` whatever state its row is in; its client gets `done`."""
        events: list[Event] = []
        if job.row is not None and not job.row.finished:
            try:
                events = self.decoder.cancel(job.row, "error")
            except Exception:
                log.exception("ending the failed request cleanly failed too")
        if not any(isinstance(event, DoneEvent) for event in events):
            events = [nothing_kept(job.request, "error")]
        with contextlib.suppress(Exception):
            self._record(job, events)
        self._leave(job)
        job.stream.publish(events)

    def _admit(self) -> list[Job]:
        """Move waiting jobs into the batch while slots and KV budget last (lock held).
        First come, first served: a large request at the head waits for room rather than being
        overtaken forever. Jobs cancelled or out of time while waiting are taken too, so
        `_start` ends them now rather than when room frees.
        """
        admitted = [job for job in self._waiting if self._end_reason(job) is not None]
        for job in admitted:
            self._waiting.remove(job)
        while self._waiting and len(self._running) + len(admitted) < self.max_running:
            reserved = self._waiting[0].reserved_tokens
            if self._reserved + reserved > self.max_batch_total_tokens:
                break
            self._reserved += reserved
            job = self._waiting.popleft()
            job.holds_reservation = True
            admitted.append(job)
        self._running.extend(admitted)
        self._count_waiting()
        self.metrics.set_running(len(self._running))
        self.metrics.kv_cache_reserved_tokens.set(self._reserved)
        return admitted

    def _start(self, job: Job) -> None:
        """Add a job's row to the batch; a job cancelled or out of time while waiting ends here."""
        reason = self._end_reason(job)
        if reason is not None:
            self._finish_unstarted(job, reason)
            return
        request = job.request
        try:
            job.row = self.decoder.add(
                request.prompt_ids, request.params, request.hold_back_deletable, request.score_top
            )
        except Exception:
            log.exception("starting the request failed")
            self._finish_unstarted(job, "error")
            return
        self._by_row[job.row] = job
        self.metrics.prompt_prefilled(len(request.prompt_ids))

    def _step(self) -> None:
        """One batched step. A failing step raises into `_work`, which ends every running row
        with `error` and counts the fault, so steps that keep failing break the engine."""
        report = self.decoder.step()
        self._calls.earn(report.decode_seconds + report.prefill_seconds)
        with contextlib.suppress(Exception):  # metrics never end a request
            self.metrics.record_step(report)
        outgoing = []
        for row, events in report.events.items():
            job = self._by_row.get(row)
            if job is not None:
                accounted = self._guarded(job, partial(self._account, job, events))
                if accounted is not None:
                    outgoing.append((job.stream, accounted))
        publish_all(outgoing)

    def _account(self, job: Job, events: list[Event]) -> list[Event]:
        """Record a job's events; free its slot first if it ended (a client that sees `done`
        sees the slot free)."""
        self._record(job, events)
        if job.row is not None and job.row.finished:
            self._leave(job)
        return events

    def _leave(self, job: Job) -> None:
        with self._wake:
            if job in self._running:
                self._running.remove(job)
            if job.holds_reservation:  # a job ended while waiting never reserved any
                job.holds_reservation = False
                self._reserved -= job.reserved_tokens
            if job.row is not None:
                self._by_row.pop(job.row, None)
            self.metrics.set_running(len(self._running))
            self.metrics.kv_cache_reserved_tokens.set(self._reserved)
        self.metrics.record_kv(self.decoder.kv_tokens, self.decoder.kv_slots)

    def _end_reason(self, job: Job) -> str | None:
        now = time.monotonic()
        if job.stream.cancel_requested:
            return "cancelled"
        if now >= job.deadline:
            return "timeout"
        if self._shutdown_deadline is not None and now >= self._shutdown_deadline:
            return "shutdown"
        return None

    def _finish_unstarted(self, job: Job, reason: str) -> None:
        done = nothing_kept(job.request, reason)
        self._record(job, [done])
        self._leave(job)
        job.stream.publish([done])

    def _record(self, job: Job, events: list[Event]) -> None:
        job.record(self.metrics, events, self.on_done)
