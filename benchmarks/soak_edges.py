"""The soak's edge phases: what random traffic does not send, each with its own figures.

Run by `bench_soak` after its random rounds, against the same server (`SERVER_SETTINGS`):

* **scoring flood**: a probe (greedy, `ignore_eos`, 16 tokens) timed alone, then while
  `FLOOD_CLIENTS` clients send `echo` + `logprobs` scoring of long prompts back to back. Scoring
  is admitted like generation and gets a fair share of the worker, so the probe's median latency
  during the flood stays within `MAX_FLOOD_SLOWDOWN` of its quiet one; every flood answer is a 200
  or a justified 429.
* **slow senders**: connections that send half a request head, or a whole head and a thousandth
  of its body, and then nothing. Each must be closed by the server within `header_timeout` (the
  body: answered 408 within `body_timeout`), plus slack, while it keeps serving.
* **slow readers**: streams whose clients (a 2 KB receive buffer) never read. The engine must be
  idle again (KV freed) while they still hold their sockets; `slow_readers_closed_by_server`
  says how many the server cut (`sse_send_timeout`) rather than finishing them into the buffers.

`big_slow_bodies` runs a server at the default body limit (2 MB) and sends two waves of 150
bodies that stop 10 bytes short: each is answered 408 at `body_timeout`, and the second wave's
peak RSS must stay within 5% of the first's (the buffers are reused, not leaked).

`failing_step` runs another server (`benchmarks.faulty_server`) whose batched step starts failing
on cue: with `max_consecutive_faults` 3, /health must answer 503 after at most that many failed
requests, every request must be answered (an error, never a hang or a false 200), and nothing
may hang.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.soak_corpus import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    MAX_NEW_TOKENS,
    MAX_REQUEST_BYTES,
    SEND_TIMEOUT,
)
from benchmarks.soak_probes import vm_rss_kb, wait_idle
from server.process import running_server

FLOOD_CLIENTS = 4
PROBES = 12
MAX_FLOOD_SLOWDOWN = 3.0
SLOW_CONNECTIONS = 12
CLOSE_SLACK = 3.0
"""Seconds past `header_timeout` a slow-header connection may stay open."""
PROBE = {"prompt": "12+34=", "max_tokens": 16, "temperature": 0, "ignore_eos": True}
SCORING = {"prompt": "7+8=" * 100, "max_tokens": 0, "echo": True, "logprobs": 1}
"""A 400-character prompt scored whole: one long forward each."""
FAULTS_IN_A_ROW = 3


async def _probe_latency(client: httpx.AsyncClient) -> float:
    start = time.monotonic()
    response = await client.post("/v1/completions", json=PROBE)
    response.raise_for_status()
    return time.monotonic() - start


async def flood(url: str) -> None:
    """`FLOOD_CLIENTS` clients sending scoring back to back, one status per line on stdout, until
    the process is ended (run in its own process, so the probe's client never waits for it)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one_client() -> None:
            while True:
                response = await client.post("/v1/completions", json=SCORING)
                print(response.status_code, flush=True)

        await asyncio.gather(*(one_client() for _ in range(FLOOD_CLIENTS)))


async def scoring_flood(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await _probe_latency(client)  # warm
        quiet = [await _probe_latency(client) for _ in range(PROBES)]
        flooding = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.soak_edges",
            url,
            stdout=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(2.0)  # the flood's process starts and fills its places
        loaded = [await _probe_latency(client) for _ in range(PROBES)]
        flooding.terminate()
        output, _ = await flooding.communicate()
    statuses = [int(line) for line in output.decode().split()]
    quiet_s, loaded_s = statistics.median(quiet), statistics.median(loaded)
    return {
        "scoring_flood_probe_quiet_p50_s": round(quiet_s, 4),
        "scoring_flood_probe_loaded_p50_s": round(loaded_s, 4),
        "scoring_flood_slowdown": round(loaded_s / quiet_s, 2),
        "scoring_flood_requests": len(statuses),
        "scoring_flood_429": statuses.count(429),
        "scoring_flood_unexpected_status": sum(1 for s in statuses if s not in (200, 429)),
    }


HALF_HEAD = b"POST /generate HTTP/1.1\r\nHost: soak\r\nContent-Type: app"
HALF_BODY = (
    b"POST /generate HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % (MAX_REQUEST_BYTES - 1) + b'{"inputs": "' + b"1" * 1000
)
"""A whole head that declares a body within the limit, then a thousandth of that body."""


async def _held(port: int, sent: bytes, timeout: float) -> tuple[float, bytes] | None:
    """(seconds until the server closed a connection that sent `sent` and then nothing, what it
    answered); None: still open `timeout` + slack seconds later."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    await writer.drain()
    start = time.monotonic()
    try:
        answer = await asyncio.wait_for(reader.read(), timeout + CLOSE_SLACK)
        return time.monotonic() - start, answer
    except (TimeoutError, ConnectionError):
        return None
    finally:
        writer.close()


async def slow_senders(url: str, port: int) -> dict[str, Any]:
    """Half heads and half bodies held open, while a probe is served beside them."""
    heads = [_held(port, HALF_HEAD, HEADER_TIMEOUT) for _ in range(SLOW_CONNECTIONS)]
    bodies = [_held(port, HALF_BODY, BODY_TIMEOUT) for _ in range(SLOW_CONNECTIONS)]
    held = asyncio.gather(*heads, *bodies)
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        served = (await client.post("/v1/completions", json=PROBE)).status_code == 200
    ends = await held
    closed_heads = [end[0] for end in ends[:SLOW_CONNECTIONS] if end is not None]
    closed_bodies = [end for end in ends[SLOW_CONNECTIONS:] if end is not None]
    return {
        "slow_header_connections": SLOW_CONNECTIONS,
        "slow_header_closed": len(closed_heads),
        "slow_header_close_max_s": round(max(closed_heads, default=0.0), 2),
        "slow_body_connections": SLOW_CONNECTIONS,
        "slow_body_closed_with_408": sum(1 for _, answer in closed_bodies if b" 408 " in answer),
        "slow_body_close_max_s": round(max((end[0] for end in closed_bodies), default=0.0), 2),
        "served_beside_slow_senders": served,
    }


def _unread_stream(port: int) -> socket.socket:
    """A streaming request whose client never reads, with a small receive buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", port))
    body = (
        b'{"prompt": "1+1=", "stream": true, "n": 4, "logprobs": 5, "echo": true, '
        b'"ignore_eos": true, "max_tokens": %d}' % MAX_NEW_TOKENS
    )
    head = b"POST /v1/completions HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
    sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return sock


def _closed_by_peer(sock: socket.socket) -> bool:
    """Drain what the server sent; True if it closed (or reset) the connection."""
    sock.settimeout(1.0)
    try:
        while chunk := sock.recv(1 << 16):
            del chunk
        return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def slow_readers(url: str, port: int) -> dict[str, Any]:
    sockets = [_unread_stream(port) for _ in range(SLOW_CONNECTIONS // 4)]
    await asyncio.sleep(SEND_TIMEOUT + 1.0)
    async with httpx.AsyncClient(base_url=url, timeout=10) as observer:
        idle = await wait_idle(observer, timeout=20.0)
    closed = sum(_closed_by_peer(sock) for sock in sockets)
    for sock in sockets:
        sock.close()
    return {
        "slow_readers": len(sockets),
        "slow_readers_engine_busy_after": max(abs(value) for value in idle.values()),
        "slow_readers_closed_by_server": closed,
    }


BIG_BODIES, BIG_BODY_BYTES = 150, 1_990_000
"""Bodies just under the default 2 MB `max_request_bytes`, all held open at once."""


async def _big_body_wave(port: int, pid: int) -> tuple[int, int]:
    """(peak RSS kB while `BIG_BODIES` connections each hold all but 10 bytes of a big body,
    RSS kB once the server has answered them all 408)."""
    head = b"POST /generate HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
    sent = head + b"Content-Length: %d\r\n\r\n" % BIG_BODY_BYTES + b"1" * (BIG_BODY_BYTES - 10)
    held = asyncio.gather(*(_held(port, sent, BODY_TIMEOUT) for _ in range(BIG_BODIES)))
    await asyncio.sleep(1.0)
    peak = vm_rss_kb(pid)
    await held
    await asyncio.sleep(1.0)
    return peak, vm_rss_kb(pid)


def big_slow_bodies(checkpoint: Path) -> dict[str, Any]:
    """A server at its default body limit, two waves of big bodies that never finish: the
    buffers are bounded (max_connections x max_request_bytes) and the second wave reuses the
    first's memory instead of adding to it."""
    options: dict[str, Any] = {"body_timeout": BODY_TIMEOUT, "max_connections": 2 * BIG_BODIES}
    with running_server(checkpoint, 120.0, {"OMP_NUM_THREADS": "1"}, **options) as handle:
        before = vm_rss_kb(handle.process.pid)
        first = asyncio.run(_big_body_wave(handle.port, handle.process.pid))
        second = asyncio.run(_big_body_wave(handle.port, handle.process.pid))
    mib = [round(kb / 1024) for kb in (before, *first, *second)]
    return {
        "big_slow_bodies": f"{BIG_BODIES} x {BIG_BODY_BYTES} bytes, twice",
        "big_slow_bodies_rss_mib": "before {}, wave 1 peak {} after {}, wave 2 peak {} after {}".format(
            *mib
        ),
        "big_slow_bodies_second_wave_growth_pct": round((second[0] / first[0] - 1) * 100, 1),
    }


def failing_step(checkpoint: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """A server whose step starts failing on cue: how soon /health sees it, how requests end."""
    flag = checkpoint.parent / "fail-steps"
    env = {"BENCH_FAIL_STEPS_FILE": str(flag), "OMP_NUM_THREADS": "1"}
    options = {**settings, "max_consecutive_faults": FAULTS_IN_A_ROW}
    statuses: list[int | None] = []
    unhealthy_after: int | None = None
    faulty = running_server(checkpoint, 120.0, env, module="benchmarks.faulty_server", **options)
    with faulty as handle, httpx.Client(base_url=handle.url, timeout=30) as client:
        before = client.post("/v1/completions", json=PROBE).status_code
        flag.touch()
        for number in range(1, 2 * FAULTS_IN_A_ROW + 1):
            try:
                statuses.append(client.post("/v1/completions", json=PROBE).status_code)
            except httpx.HTTPError:
                statuses.append(None)
            health = client.get("/health").status_code
            if health == 503 and unhealthy_after is None:
                unhealthy_after = number
    return {
        "failing_step_served_before": before == 200,
        "failing_step_statuses": ", ".join(str(status) for status in statuses),
        "failing_step_false_200": sum(1 for status in statuses if status == 200),
        "failing_step_hangs": sum(1 for status in statuses if status is None),
        "failing_step_unhealthy_after_requests": unhealthy_after,
    }


def edge_failures(figures: dict[str, Any]) -> list[str]:
    """The edge phases' checks that do not hold, one line each."""
    failures = []
    if not figures["scoring_flood_slowdown"] <= MAX_FLOOD_SLOWDOWN:
        failures.append(
            f"a probe ran {figures['scoring_flood_slowdown']}x slower during the scoring flood "
            f"(at most {MAX_FLOOD_SLOWDOWN}x)"
        )
    if not figures["big_slow_bodies_second_wave_growth_pct"] < 5:
        failures.append("a second wave of slow big bodies grew the server's memory by 5% or more")
    for name in (
        "scoring_flood_unexpected_status",
        "slow_readers_engine_busy_after",
        "failing_step_false_200",
        "failing_step_hangs",
    ):
        if figures[name] != 0:
            failures.append(f"{name} is {figures[name]}, not 0")
    if figures["slow_header_closed"] != figures["slow_header_connections"]:
        failures.append("a slow-header connection outlived header_timeout")
    if figures["slow_body_closed_with_408"] != figures["slow_body_connections"]:
        failures.append("a slow body was not answered 408 and closed by body_timeout")
    if not figures["served_beside_slow_senders"]:
        failures.append("the server did not serve while slow senders held connections")
    if not figures["failing_step_served_before"]:
        failures.append("the fault-injected server did not serve before its steps failed")
    after = figures["failing_step_unhealthy_after_requests"]
    if after is None or after > FAULTS_IN_A_ROW:
        failures.append(f"/health went 503 after {after} failed requests, not {FAULTS_IN_A_ROW}")
    return failures


if __name__ == "__main__":
    asyncio.run(flood(sys.argv[1]))
