"""How many threads the model may use, and how long they spin: no fight over shared cores.

torch sizes its OpenMP pool from the host's core count, and OpenMP threads spin while they
wait for work. A process confined to fewer CPUs (a container's CPU quota, `taskset`) or sharing
its cores with another busy process then spends its time spinning for a core it does not have.
Sleeping at once (`OMP_WAIT_POLICY=PASSIVE`) avoids that but pays a wake-up on every parallel
region: measured here (`make bench-step`) it halved a quiet stream's tokens/s. So:

* the pool is sized from the CPUs this process may use (its affinity mask and the cgroup CPU
  quota, as a container sees them);
* waiting threads spin a short while, then sleep (`GOMP_SPINCOUNT`, libgomp's knob: the
  spin a quiet step needs between two parallel regions, not the 300,000 default), unless the
  environment already chose (`OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` set).

The spin count is read once, when torch loads its OpenMP runtime, so `bound_spin_waits` must run
before torch is imported; the packages that run models call it in their `__init__`. This module
imports nothing heavy for that reason.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

WAIT_POLICY = "OMP_WAIT_POLICY"
SPIN_COUNT = "GOMP_SPINCOUNT"
SHORT_SPIN = "10000"
"""Spins before an idle OpenMP thread sleeps (`make bench-step` compares the choices)."""
CGROUP_ROOT = Path("/sys/fs/cgroup")


def bound_spin_waits() -> None:
    """Idle OpenMP threads spin briefly, then sleep (unless the environment already chose)."""
    if WAIT_POLICY not in os.environ and SPIN_COUNT not in os.environ:
        os.environ[SPIN_COUNT] = SHORT_SPIN


def _cgroup_v2_quota(root: Path) -> float | None:
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def _cgroup_v1_quota(root: Path) -> float | None:
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup allows (`cpu.max`, or v1's cfs quota); None: no limit."""
    return _cgroup_v2_quota(root) or _cgroup_v1_quota(root)


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may really use: its affinity mask, capped by the CPU quota."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = os.cpu_count() or 1
    quota = cpu_quota(root)
    if quota is not None:
        allowed = min(allowed, max(1, math.floor(quota)))
    return max(1, allowed)


def named_threads() -> int | None:
    """The thread count `OMP_NUM_THREADS` names, when the environment sets a positive one."""
    named = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(named) if named.isdigit() and int(named) > 0 else None


def default_threads() -> int:
    """`OMP_NUM_THREADS` when the environment sets it, else the CPUs this process may use."""
    return named_threads() or available_cpus()


def serving_threads(cpus: int | None = None) -> int:
    """The model's threads in a server: `OMP_NUM_THREADS` when the environment sets it, else
    one fewer than the CPUs (`cpus`, default: those this process may use), at least one. The
    server's other threads (the event loop writing every streamed token, tokenisation) need a
    core too; sharing one with the model's threads makes every parallel region wait for the
    scheduler (docs/engine.md: one 4x512 stream 199 tok/s on one thread, 92 on two, 2 cores)."""
    named = named_threads()
    if cpus is None and named is not None:
        return named
    return max(1, (cpus if cpus is not None else available_cpus()) - 1)


def configure_threads(threads: int | None = None) -> int:
    """Size torch's pools: `threads` intra-op threads (default: `default_threads`) and one
    inter-op thread (one forward runs at a time). Returns the count."""
    import torch

    count = threads if threads is not None else default_threads()
    if count < 1:
        raise ValueError(f"threads must be at least 1 (got {count})")
    torch.set_num_threads(count)
    # already set, or parallel work already ran: keep what is there
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return count
