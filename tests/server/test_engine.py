"""The engine on its own: interleaving, cancellation, queue limits (real model, no HTTP)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from backtrack.events import DoneEvent, TokenEvent
from backtrack.params import GenerationParams
from server.app import create_app
from server.engine import Engine, EngineDown, GenerationRequest, QueueFull, Stream
from server.limits import Limits
from server.loading import ServedModel, load_served_model
from server.metrics import Metrics
from server.service import GenerationService
from server.settings import Settings
from tests.server.conftest import LOOP_PROMPT, PROMPT


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def served(scripted_checkpoint_dir) -> ServedModel:
    return load_served_model(Settings(checkpoint=scripted_checkpoint_dir, device="cpu"))


@pytest.fixture
def make_engine(served) -> Iterator:
    engines: list[Engine] = []

    def make(max_running: int = 4, max_waiting: int = 4, **options) -> Engine:
        engine = Engine(
            served, Metrics("test"), max_running=max_running, max_waiting=max_waiting, **options
        )
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


@pytest.mark.anyio
async def test_a_request_ended_while_waiting_gives_back_no_kv_it_never_reserved(
    make_engine, served
):
    """Cancelled or timed out in the queue, a request never reserved KV: ending it must not
    release any, or the reserved count drifts below 0 and admission overruns the KV budget
    (found by the soak benchmark: -399 reserved tokens after 2,200 requests)."""
    engine = make_engine(max_running=1, max_waiting=2)

    def reserved() -> float | None:
        return engine.metrics.registry.get_sample_value("backtrack_kv_cache_reserved_tokens")

    running = engine.submit(loop_request(served, 4000))
    await first_event(running)
    held = reserved()
    assert held is not None and held > 0
    cancelled = engine.submit(loop_request(served, 10))
    timed_out = engine.submit(loop_request(served, 10, timeout=0.2))
    cancelled.cancel()
    await asyncio.wait_for(collect(cancelled), timeout=5)
    await asyncio.wait_for(collect(timed_out), timeout=5)
    assert reserved() == held
    running.cancel()
    await asyncio.wait_for(collect(running), timeout=5)
    assert engine.running == 0 and reserved() == 0


async def collect(stream: Stream) -> list:
    return [event async for event in stream]


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.anyio
async def test_a_fault_outside_the_step_ends_only_its_request(make_engine, served, monkeypatch):
    """A bookkeeping fault (here: decoding a token's text) ends that request with `error`;
    the request beside it and the ones after it are served as usual."""
    engine = make_engine()
    record = engine._record

    def faulty(job, events) -> None:
        if job.request.endpoint == "faulty" and any(isinstance(e, TokenEvent) for e in events):
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        record(job, events)

    monkeypatch.setattr(engine, "_record", faulty)
    bad_request = loop_request(served, 30)
    bad_request.endpoint = "faulty"
    bad = engine.submit(bad_request)
    good = engine.submit(loop_request(served, 30))
    bad_events = await asyncio.wait_for(collect(bad), 10)
    good_events = await asyncio.wait_for(collect(good), 10)
    assert bad_events[-1].finish_reason == "error"
    assert good_events[-1].finish_reason == "length"
    assert good_events[-1].generated_tokens == 30
    after = await asyncio.wait_for(collect(engine.submit(loop_request(served, 5))), 10)
    assert after[-1].finish_reason == "length"
    assert engine.problem() is None
    assert engine.running == 0 and engine.decoder.kv.tokens_held() == 0


class WorkerKilled(BaseException):
    """Something no `except Exception` catches: the worker thread dies."""


def app_client(served, engine: Engine) -> httpx.AsyncClient:
    """The real app around an engine, without the lifespan (no second model load)."""
    settings = Settings(checkpoint=served.path, device="cpu")
    app = create_app(settings)
    app.state.engine = engine
    app.state.service = GenerationService(served, engine, Limits.from_settings(settings), 30)
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.anyio
async def test_a_dead_worker_ends_every_request_and_turns_health_to_503(
    make_engine, served, monkeypatch
):
    engine = make_engine(max_running=1)
    running = engine.submit(loop_request(served, 4000))
    await first_event(running)
    waiting = engine.submit(loop_request(served, 10))

    def die() -> None:
        raise WorkerKilled

    monkeypatch.setattr(engine, "_turn", die)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # expected death, no noise
    assert (await asyncio.wait_for(collect(running), 10))[-1].finish_reason == "error"
    assert (await asyncio.wait_for(collect(waiting), 10))[-1].finish_reason == "error"
    wait_until(lambda: engine.problem() is not None)
    assert engine.problem() == "the engine worker stopped"
    with pytest.raises(EngineDown):
        engine.submit(loop_request(served, 10))
    async with app_client(served, engine) as client:
        health = await client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy"
        refused = await client.post("/generate", json={"inputs": PROMPT})
        assert refused.status_code == 503
        assert refused.json()["error_type"] == "unavailable"


@pytest.mark.anyio
async def test_steps_that_keep_failing_break_the_engine_and_turn_health_to_503(
    make_engine, served, monkeypatch
):
    """Each failed step ends its requests with `error`; `max_faults_in_a_row` of them in a row
    mark the engine broken, so the orchestrator stops routing to it and restarts it."""
    engine = make_engine(max_faults_in_a_row=3)

    def failing_step():
        raise RuntimeError("the forward failed")

    monkeypatch.setattr(engine.decoder, "step", failing_step)
    for attempt in range(3):
        assert engine.problem() is None, f"broken after only {attempt} failed steps"
        ended = await asyncio.wait_for(collect(engine.submit(loop_request(served, 10))), 10)
        assert ended[-1].finish_reason == "error"
    wait_until(lambda: engine.problem() is not None)
    assert engine.problem() == "the engine worker failed 3 turns in a row"
    with pytest.raises(EngineDown):
        engine.submit(loop_request(served, 10))
    async with app_client(served, engine) as client:
        assert (await client.get("/health")).status_code == 503


@pytest.mark.anyio
async def test_a_good_step_resets_the_count_of_failed_steps(make_engine, served, monkeypatch):
    engine = make_engine(max_faults_in_a_row=2)
    step, failures = engine.decoder.step, iter([True, False, True, False, True])

    def sometimes_failing():
        if next(failures, False):
            raise RuntimeError("the forward failed")
        return step()

    monkeypatch.setattr(engine.decoder, "step", sometimes_failing)
    for _ in range(3):
        await asyncio.wait_for(collect(engine.submit(loop_request(served, 1))), 10)
    assert engine.problem() is None


@pytest.mark.anyio
async def test_a_poisoned_device_breaks_the_engine_at_once_and_ends_the_process(
    make_engine, served, monkeypatch
):
    """A CUDA error poisons the context: no later kernel can work, so the first one breaks the
    engine and asks the process to end (the CLI exits 1 and the orchestrator restarts it)."""
    fatal: list[str] = []
    engine = make_engine(max_faults_in_a_row=3, on_fatal=fatal.append)

    def poisoned_step():
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(engine.decoder, "step", poisoned_step)
    ended = await asyncio.wait_for(collect(engine.submit(loop_request(served, 10))), 10)
    assert ended[-1].finish_reason == "error"
    wait_until(lambda: bool(fatal))
    assert "device-side assert" in fatal[0]
    assert "cannot recover" in (engine.problem() or "")


@pytest.mark.anyio
async def test_a_stuck_worker_turns_health_to_503_and_streams_give_up(
    make_engine, served, monkeypatch
):
    """A step that never returns: /health says so, and a stream ends (`timeout`) by itself
    once its request timeout and the stall allowance have passed."""
    engine = make_engine(stall_timeout=0.2)
    release = threading.Event()
    step = engine.decoder.step

    def stuck():
        release.wait(30)
        return step()

    monkeypatch.setattr(engine.decoder, "step", stuck)
    stream = engine.submit(loop_request(served, 4000, timeout=0.1))
    try:
        events = await asyncio.wait_for(collect(stream), 10)
        assert events[-1].finish_reason == "timeout"
        assert "stuck" in (engine.problem() or "")
        async with app_client(served, engine) as client:
            assert (await client.get("/health")).status_code == 503
    finally:
        release.set()
    wait_until(lambda: engine.problem() is None)


@pytest.mark.anyio
async def test_a_second_sigterm_never_moves_the_shutdown_deadline_later(make_engine, served):
    engine = make_engine()
    engine.begin_shutdown(5.0)
    first = engine.shutdown_deadline
    engine.begin_shutdown(5.0)
    engine.begin_shutdown(600.0)
    assert engine.shutdown_deadline == first
    engine.begin_shutdown(0.0)  # an earlier deadline (stop()) still wins
    assert engine.shutdown_deadline is not None and engine.shutdown_deadline < first


@pytest.mark.anyio
async def test_a_post_after_sigterm_is_503_with_retry_after(make_engine, served):
    engine = make_engine()
    engine.begin_shutdown(10.0)
    async with app_client(served, engine) as client:
        for route, body in [
            ("/generate", {"inputs": PROMPT}),
            ("/v1/completions", {"prompt": PROMPT}),
        ]:
            response = await client.post(route, json=body)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "5"


@pytest.mark.anyio
async def test_a_flood_of_scoring_calls_does_not_stall_a_running_stream(make_engine, served):
    """Scoring runs between steps for about as long as a step takes (at least one call a turn):
    calls that each take far longer than a step are spread one per turn, so the stream keeps
    getting tokens while they run, where running them all before the next step would stall it
    for the whole flood."""
    engine = make_engine(max_running=2, max_waiting=16)
    order: list[str] = []

    def slow_call() -> None:
        time.sleep(0.05)
        order.append("call")

    stream = engine.submit(loop_request(served, 400))
    assert isinstance(await first_event(stream), TokenEvent)
    calls = [engine.call(slow_call) for _ in range(8)]

    async def read() -> None:
        async for event in stream:
            if isinstance(event, TokenEvent):
                order.append("token")
            if len(order) > 60 or order.count("call") == 8:
                stream.cancel()

    await asyncio.gather(read(), *calls)
    first, last = order.index("call"), len(order) - 1 - order[::-1].index("call")
    assert "token" in order[first:last]  # tokens arrived between the calls, not only after them


def test_pending_calls_get_the_time_the_steps_earn_them_and_repay_a_long_one():
    from server.calls import WorkerCalls

    async def scenario() -> list[int]:
        calls, ran = WorkerCalls(), []

        def call(number: int, seconds: float) -> None:
            time.sleep(seconds)
            ran.append(number)

        futures = [calls.add(lambda n=n: call(n, 0.02)) for n in range(5)]
        lock = threading.Condition()
        calls.run_due(lock, lambda: None)  # no step has earned them anything yet
        assert ran == []
        calls.earn(0.001)  # a step much shorter than a call: one call runs, then a debt
        calls.run_due(lock, lambda: None)
        assert ran == [0]
        calls.earn(0.001)  # the debt (about 0.019 s) is not repaid yet: nothing runs
        calls.run_due(lock, lambda: None)
        assert ran == [0]
        futures[2].cancel()  # its caller left: skipped unrun
        calls.run_all(lock, lambda: None)  # nothing decoding: everything runs, debt forgiven
        await asyncio.sleep(0)
        return ran

    assert asyncio.run(scenario()) == [0, 1, 3, 4]


def test_calls_arriving_while_the_queue_runs_wait_for_the_next_turn():
    """Scoring that keeps arriving (clients sending back to back) cannot hold the worker in one
    turn for ever: a waiting request is admitted between two turns."""
    from server.calls import WorkerCalls

    async def scenario() -> list[str]:
        calls, ran = WorkerCalls(), []
        lock = threading.Condition()

        def first() -> None:
            ran.append("first")
            calls._pending.append(later)  # another client's call, queued while this one runs

        calls.add(first)
        later_future = calls.add(lambda: ran.append("later"))
        later = calls._pending.pop()
        calls.run_all(lock, lambda: None)
        assert ran == ["first"] and len(calls) == 1
        calls.run_all(lock, lambda: None)
        await asyncio.sleep(0)
        assert later_future.done()
        return ran

    assert asyncio.run(scenario()) == ["first", "later"]
