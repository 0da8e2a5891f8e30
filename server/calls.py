"""Work the engine's worker runs between two steps that is not part of the batch: scoring.

`logprobs` and `echo` need a forward over a prompt and its answer (`GenerationService.score`).
The worker owns the model, so those forwards queue here and run between two batched steps.
They take queue places like waiting requests (the engine refuses a call with 429 when every
place is taken, and its queue gauge counts them), and a call whose caller has gone (its future
cancelled: the client left) is dropped unrun. While a batch is decoding, calls get a bounded share
of the worker: each step earns them `CALL_SHARE` of the time it took (banked up to one step's
worth), and a call runs only while that credit is positive, so a flood of scoring slows the
running streams by a bounded factor instead of stalling them behind every forward (the credit can
go into debt: a long call is paid back by the steps that follow it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from server.bridge import settle

T = TypeVar("T")
CALL_SHARE = 0.15
"""Worker time calls earn per second of decoding: while a batch decodes, scoring gets about an
eighth of the worker. On the soak's tiny model (2 cores, `make bench-soak`) a probe ran beside a
scoring flood 2.5-2.7x slower than alone at 0.15, 2.8-2.95x at 0.25 and 4.7x at 1.0 (the rest is
the flood's own HTTP work on the same cores); with nothing decoding, scoring gets all of it."""


@dataclass(frozen=True)
class PendingCall:
    function: Callable[[], Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop

    def run(self) -> None:
        """Run on the worker thread; the outcome is handed to the awaiting route's loop."""
        if self.future.cancelled():
            return  # nobody awaits it any more: no forward for a client that left
        try:
            result, error = self.function(), None
        except Exception as failure:
            result, error = None, failure
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
            self.loop.call_soon_threadsafe(settle, self.future, result, error)


class WorkerCalls:
    """The queue of pending calls (the engine holds its lock around every method)."""

    def __init__(self) -> None:
        self._pending: deque[PendingCall] = deque()
        self._credit = 0.0
        """Worker seconds due to the calls (negative: owed to the steps)."""

    def __len__(self) -> int:
        return sum(1 for call in self._pending if not call.future.cancelled())

    def add(self, function: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(PendingCall(function, future, loop))
        return future

    def earn(self, seconds: float) -> None:
        """A step took `seconds`: `CALL_SHARE` of that is now due to the calls, banked up to one
        step's worth."""
        self._credit = min(self._credit + CALL_SHARE * seconds, seconds)

    def run_due(self, lock: threading.Condition, on_change: Callable[[], None]) -> None:
        """Run pending calls in arrival order while their credit lasts (each taken under `lock`,
        then `on_change`, which refreshes the queue gauge); each call's time is charged."""
        while self._credit > 0:
            started = time.monotonic()
            if not self._run_one(lock, on_change):
                return
            self._credit -= time.monotonic() - started

    def run_all(self, lock: threading.Condition, on_change: Callable[[], None]) -> None:
        """Nothing is decoding: run the calls pending now, owing nothing. Calls that arrive
        meanwhile wait for the next turn, so a request that came in can be admitted first."""
        with lock:
            pending = len(self._pending)
        for _ in range(pending):
            if not self._run_one(lock, on_change):
                break
        self._credit = 0.0

    def _run_one(self, lock: threading.Condition, on_change: Callable[[], None]) -> bool:
        with lock:
            call = self._pending.popleft() if self._pending else None
            on_change()
        if call is None:
            return False
        call.run()
        return True
