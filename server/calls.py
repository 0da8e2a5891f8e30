"""Work the engine's worker runs between two steps that is not part of the batch: scoring.

`logprobs` and `echo` need a forward over a prompt and its answer (`GenerationService.score`).
The worker owns the model, so those forwards queue here and run between two batched steps.
They take queue places like waiting requests (the engine refuses a call with 429 when every
place is taken, and its queue gauge counts them), and a call whose caller has gone (its future
cancelled: the client left) is dropped unrun.
"""

from __future__ import annotations

import asyncio
import contextlib
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

    def take_all(self) -> list[PendingCall]:
        calls, self._pending = list(self._pending), deque()
        return calls
