"""Threads that follow the cores other processes leave free, so two never fight over one core.

A forward split over N OpenMP threads ends at a barrier: it is as slow as its slowest thread. On
a machine where another process keeps one core busy, one of our threads shares that core and the
barrier waits for the scheduler to give it a turn (milliseconds) at every parallel region; the
step slows several-fold, and spinning threads slow the neighbour too. One thread fewer runs on
the free core at full speed. `CoreShare` watches the CPUs this process may use (`/proc/stat`,
the cores' busy time less this process's own) and sets torch's thread count between steps:

* a core counts as taken when other processes used more than `TAKEN` of it over the last
  `interval` seconds (a daemon's blips do not count);
* the count moves at most once per interval, between two steps (never inside a forward), and
  stays between 1 and the configured most.

Linux only (`/proc/stat`); elsewhere, or when the file cannot be read, the count stays fixed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

TAKEN = 0.5
"""Share of a core other processes must use for it to count as taken."""
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
"""user, nice, system, irq, softirq, steal in a `/proc/stat` cpu line (idle, iowait excluded)."""


def busy_seconds(stat: str, cpus: set[int]) -> float:
    """CPU-seconds the `cpus` have been busy since boot, summed, from `/proc/stat`'s text."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = rest.split()
        total += sum(int(values[index]) for index in BUSY_FIELDS if index < len(values))
    return total / ticks


def own_cpu_seconds() -> float:
    """CPU-seconds this process (every thread) has used."""
    times = os.times()
    return times.user + times.system


def threads_for(others: float, cpus: int, most: int) -> int:
    """Threads to run when other processes use `others` cores' worth of the `cpus`."""
    taken = max(0, math.ceil(others - TAKEN))
    return max(1, min(most, cpus - taken))


class CoreShare:
    """Sets the thread count between steps from how busy other processes keep our cores."""

    def __init__(
        self,
        most: int,
        apply: Callable[[int], None],
        interval: float = 1.0,
        stat_path: Path = Path("/proc/stat"),
        cpus: set[int] | None = None,
        own_seconds: Callable[[], float] = own_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.most, self.apply, self.interval = most, apply, interval
        self.stat_path, self.own_seconds, self.clock = stat_path, own_seconds, clock
        self.cpus = cpus if cpus is not None else _allowed_cpus()
        self.threads = most
        self.others = 0.0
        """Cores' worth of our CPUs other processes used over the last interval."""
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            stat = self.stat_path.read_text()
        except OSError:
            return None
        return self.clock(), busy_seconds(stat, self.cpus), self.own_seconds()

    def follow(self) -> int:
        """Re-measure once per interval and set the count if it changed; returns the count."""
        if self._last is None or self.clock() - self._last[0] < self.interval:
            return self.threads
        now = self._sample()
        if now is None:
            return self.threads
        (then, busy_then, own_then), (wall, busy, own) = self._last, now
        self._last = now
        elapsed = wall - then
        if elapsed <= 0:
            return self.threads
        self.others = max(0.0, ((busy - busy_then) - (own - own_then)) / elapsed)
        wanted = threads_for(self.others, len(self.cpus), self.most)
        if wanted != self.threads:
            self.apply(wanted)
            self.threads = wanted
        return self.threads


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def core_share_for(setting: int | None, threads: int) -> CoreShare | None:
    """A `CoreShare` when the thread count was left to the machine (no `threads` setting, no
    `OMP_NUM_THREADS`) and there is more than one thread to give up; else None (fixed)."""
    if setting is not None or os.environ.get("OMP_NUM_THREADS", "").strip() or threads < 2:
        return None
    import torch

    return CoreShare(threads, torch.set_num_threads)
