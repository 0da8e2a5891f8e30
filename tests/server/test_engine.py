"""The engine on its own: interleaving, cancellation, queue limits (real model, no HTTP)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from backtrack.events import DoneEvent, TokenEvent
from backtrack.params import GenerationParams
from server.engine import Engine, GenerationRequest, QueueFull, Stream
from server.loading import ServedModel, load_served_model
from server.metrics import Metrics
from server.settings import Settings
from tests.server.conftest import LOOP_PROMPT


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def served(scripted_checkpoint_dir) -> ServedModel:
    return load_served_model(Settings(checkpoint=scripted_checkpoint_dir, device="cpu"))


@pytest.fixture
def make_engine(served) -> Iterator:
    engines: list[Engine] = []

    def make(max_running: int = 4, max_waiting: int = 4) -> Engine:
        engine = Engine(served, Metrics(), max_running=max_running, max_waiting=max_waiting)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def loop_request(served: ServedModel, tokens: int, timeout: float | None = None):
    params = GenerationParams(max_new_tokens=tokens)
    return GenerationRequest(
        served.prompts.completion(LOOP_PROMPT), params, "test", timeout=timeout
    )


async def first_event(stream: Stream):
    async for event in stream:
        return event


@pytest.mark.anyio
async def test_requests_interleave_step_by_step(make_engine, served):
    engine = make_engine()
    arrivals: list[str] = []

    async def drain(name: str, stream: Stream) -> None:
        async for event in stream:
            if isinstance(event, TokenEvent):
                arrivals.append(name)

    first = engine.submit(loop_request(served, 40))
    second = engine.submit(loop_request(served, 40))
    await asyncio.gather(drain("a", first), drain("b", second))
    assert arrivals.count("a") == arrivals.count("b") == 40
    assert arrivals.index("b") < len(arrivals) - 1 - arrivals[::-1].index("a")


@pytest.mark.anyio
async def test_cancel_ends_the_request_within_a_step(make_engine, served):
    engine = make_engine()
    stream = engine.submit(loop_request(served, 4000))
    assert isinstance(await first_event(stream), TokenEvent)
    stream.cancel()
    rest = [event async for event in stream]
    assert isinstance(rest[-1], DoneEvent)
    assert rest[-1].finish_reason == "cancelled"
    assert len(rest) < 50  # a few steps already queued at most, never the 4000
    await asyncio.sleep(0.05)
    assert engine.running == 0


@pytest.mark.anyio
async def test_full_engine_refuses_at_once(make_engine, served):
    engine = make_engine(max_running=1, max_waiting=1)
    running = engine.submit(loop_request(served, 4000))
    waiting = engine.submit(loop_request(served, 4000))
    with pytest.raises(QueueFull):
        engine.submit(loop_request(served, 10))
    running.cancel()
    waiting.cancel()


@pytest.mark.anyio
async def test_a_waiting_request_ends_without_waiting_for_a_slot(make_engine, served):
    engine = make_engine(max_running=1, max_waiting=2)
    running = engine.submit(loop_request(served, 4000))
    await first_event(running)
    cancelled = engine.submit(loop_request(served, 10))
    timed_out = engine.submit(loop_request(served, 10, timeout=0.2))
    cancelled.cancel()
    done = await asyncio.wait_for(first_event(cancelled), timeout=5)
    assert done.finish_reason == "cancelled"
    done = await asyncio.wait_for(first_event(timed_out), timeout=5)
    assert done.finish_reason == "timeout"
    assert engine.running == 1
    running.cancel()
