"""The stream bridge: one request's events handed from the engine's worker thread to asyncio.

    worker thread                               event loop (routes)
    publish_all([(stream, events), ...])  -->   async for event in stream
    stream.cancel_requested  <-- flag ------    stream.cancel()

The routes see only this module: a `Stream` to read and cancel, and the refusals `submit` can
raise (`QueueFull` answers 429, `ShuttingDown` 503). What a route hands to the SSE writer is
anything that offers `CancellableStream` (one stream, or the `n` choices read as one).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Protocol, TypeVar

from backtrack.events import DoneEvent, Event

T_co = TypeVar("T_co", covariant=True)


class QueueFull(Exception):
    """Every decoding slot and every queue place is taken; answer 429 at once."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new requests; answer 503."""


class EngineDown(ShuttingDown):
    """The worker thread is gone: nothing would ever answer a new request; answer 503."""


class CancellableStream(Protocol[T_co]):
    """What a route streams or collects: items to iterate, a way to stop the generation behind
    them, and the final `done` once every item has arrived (None before)."""

    @property
    def done(self) -> DoneEvent | None: ...

    def cancel(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[T_co]: ...


class Stream:
    """One request's events, read by the asyncio side; `cancel()` stops it within one step."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wake: threading.Condition,
        give_up_after: float | None = None,
        fallback: DoneEvent | None = None,
    ) -> None:
        self._loop = loop
        self._wake = wake
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.cancel_requested = False
        self.done: DoneEvent | None = None
        self._give_up_at = None if give_up_after is None else time.monotonic() + give_up_after
        self._fallback = fallback

    def cancel(self) -> None:
        """Ask the worker to end this request (client gone); safe to call at any time."""
        self.cancel_requested = True
        with self._wake:
            self._wake.notify()

    def publish(self, events: list[Event]) -> None:
        """Called by the worker thread: hand events to the event loop."""
        publish_all([(self, events)])

    def _deliver(self, events: list[Event]) -> None:
        self._queue.put_nowait(events)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while self.done is None:
            for event in await self._next():
                if isinstance(event, DoneEvent):
                    self.done = event
                yield event

    async def _next(self) -> list[Event]:
        """The next events; past the backstop (a wedged worker) the fallback `done` instead,
        since the worker thread is what enforces the request timeout."""
        if self._give_up_at is None or self._fallback is None:
            return await self._queue.get()
        try:
            return await asyncio.wait_for(self._queue.get(), self._give_up_at - time.monotonic())
        except TimeoutError:
            self.cancel()
            return [self._fallback]


def publish_all(batch: list[tuple[Stream, list[Event]]]) -> None:
    """Hand one step's events to their streams with one wake-up per event loop, not per stream.

    Waking the loop costs a syscall and a GIL hand-over; at 16 streams per step, once per step
    instead of 16 times leaves the cores to the forward.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, list[Event]]]] = {}
    for stream, events in batch:
        by_loop.setdefault(stream._loop, []).append((stream, events))
    for loop, items in by_loop.items():
        # A closed event loop means nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_deliver_all, items)


def _deliver_all(items: list[tuple[Stream, list[Event]]]) -> None:
    for stream, events in items:
        stream._deliver(events)


def settle(future: asyncio.Future, result: object, error: Exception | None) -> None:
    """Hand a worker-thread call's outcome to its awaiting route (run on the event loop)."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
