"""Work the engine's worker runs between two steps that is not part of the batch: scoring.

`logprobs` and `echo` need a forward over a prompt and its answer (`GenerationService.score`).
The worker owns the model, so those forwards queue here and run between two batched steps.
They take queue places like waiting requests (the engine refuses a call with 429 when every
place is taken, and its queue gauge counts them), and a call whose caller has gone (its future
cancelled: the client left) is dropped unrun. While a batch is decoding, the worker runs them
for at most about as long as its last step took (at least one per turn), so a flood of scoring
slows the running streams by a bounded factor instead of stalling them behind every forward.
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

    def __len__(self) -> int:
        return sum(1 for call in self._pending if not call.future.cancelled())

    def add(self, function: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(PendingCall(function, future, loop))
        return future

    def run_for(
        self, lock: threading.Condition, seconds: float, on_change: Callable[[], None]
    ) -> None:
        """Run pending calls in arrival order, each taken under `lock` (then `on_change`, which
        refreshes the queue gauge), until `seconds` have passed; at least one runs."""
        deadline = time.monotonic() + seconds
        while True:
            with lock:
                call = self._pending.popleft() if self._pending else None
                on_change()
            if call is None:
                return
            call.run()
            if time.monotonic() >= deadline:
                return
