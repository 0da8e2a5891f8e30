"""What the soak reads off its server besides answers: its memory and its idle gauges."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from benchmarks.soak_judge import metric_sum, parse_metrics

IDLE_GAUGES = (
    "backtrack_running_requests",
    "backtrack_queue_size",
    "backtrack_kv_cache_tokens",
    "backtrack_kv_cache_slots",
    "backtrack_kv_cache_reserved_tokens",
)


def vm_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def wait_idle(client: httpx.AsyncClient, timeout: float = 15.0) -> dict[str, float]:
    """The idle gauges once running and queued requests are 0 (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        values = parse_metrics((await client.get("/metrics")).text)
        gauges = {name: metric_sum(values, name) for name in IDLE_GAUGES}
        if not any(gauges.values()) or time.monotonic() > deadline:
            return gauges
        await asyncio.sleep(0.1)
