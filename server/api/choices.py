"""OpenAI's `n` choices and prompt lists: one engine request per choice, read back as one.

`submit_all` takes plain token ids and parameters (one pair per choice) and queues them all;
`Choices` reads their streams as one stream of `(choice index, event)` that the SSE writer and
`collect` treat like any other (`server.bridge.CancellableStream`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from backtrack.events import DoneEvent, Event
from backtrack.params import MAX_SEED, GenerationParams
from server.api.errors import ApiError
from server.bridge import Stream
from server.limits import Limits
from server.service import GenerationService


@dataclass(frozen=True)
class Prompt:
    """One prompt of a request: its ids and its text (for `echo`)."""

    ids: list[int]
    text: str


def check_choices(prompts: int, n: int, limits: Limits) -> None:
    """422 before any work when prompts x n passes `max_choices_per_request`: each choice takes
    a place of its own, and such a request can never be admitted without shutting others out
    (OpenAI also answers an `n` over its maximum as an invalid request, not as a rate limit)."""
    asked, limit = prompts * n, limits.max_choices_per_request
    if asked > limit:
        raise ApiError(
            422,
            f"n: this request asks for {asked} choices ({prompts} prompts x n {n}); this server "
            f"admits at most {limit} per request (max_choices_per_request, from "
            "max_request_share of max_concurrent_requests + max_queue_size): lower n or send "
            "fewer prompts",
            "invalid_request_error",
            "n",
        )


def choice_params(params: GenerationParams, number: int) -> GenerationParams:
    """Choice `number` of `n`: its own seed (seed + number) so sampled choices differ."""
    if number == 0 or params.seed is None:
        return params
    return params.model_copy(update={"seed": (params.seed + number) % (MAX_SEED + 1)})


class Choices:
    """The streams of one request's choices, read as one: `(choice index, event)`."""

    def __init__(self, streams: list[Stream | None], prompt_tokens: list[int]) -> None:
        self.streams = streams
        self.prompt_tokens = prompt_tokens
        self.done: DoneEvent | None = None
        self.finals: dict[int, DoneEvent] = {}

    def cancel(self) -> None:
        for stream in self.streams:
            if stream is not None and stream.done is None:
                stream.cancel()

    async def __aiter__(self) -> AsyncIterator[tuple[int, Event]]:
        queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()

        async def pump(index: int, stream: Stream | None) -> None:
            try:
                if stream is None:  # max_tokens 0: nothing generated
                    done = DoneEvent("", "length", 0, 0, prompt_tokens=self.prompt_tokens[index])
                    await queue.put((index, done))
                else:
                    async for event in stream:
                        await queue.put((index, event))
            finally:
                await queue.put((index, None))

        tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(self.streams)]
        remaining = len(tasks)
        try:
            while remaining:
                index, event = await queue.get()
                if event is None:
                    remaining -= 1
                    continue
                if isinstance(event, DoneEvent):
                    self.finals[index] = event
                    if len(self.finals) == len(self.streams):
                        self.done = event
                yield index, event
        finally:
            for task in tasks:
                task.cancel()

    def by_choice(self, items: list[tuple[int, Event]]) -> dict[int, list[Event]]:
        """Collected `(index, event)` pairs, grouped per choice in arrival order."""
        events: dict[int, list[Event]] = {i: [] for i in range(len(self.streams))}
        for index, event in items:
            events[index].append(event)
        return events


def submit_all(
    service: GenerationService,
    choices: list[tuple[list[int], GenerationParams]],
    generate: bool,
    endpoint: str,
    hold_back_deletable: bool,
    score_top: int | None = None,
) -> Choices:
    """Queue every choice (its prompt's ids, its parameters); should one be refused (429, 503),
    those already queued are cancelled. Without `generate` nothing is queued (max_tokens 0).
    `score_top`: each token is scored from its own step, with that many alternatives."""
    streams: list[Stream | None] = []
    try:
        for ids, params in choices:
            stream = None
            if generate:
                stream = service.submit(ids, params, endpoint, hold_back_deletable, score_top)
            streams.append(stream)
    except Exception:
        for stream in streams:
            if stream is not None:
                stream.cancel()
        raise
    return Choices(streams, [len(ids) for ids, _ in choices])
