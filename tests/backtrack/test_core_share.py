"""Threads follow the cores other processes leave free: measured from /proc/stat, set between
steps, never below one thread nor above the configured most."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from backtrack.batch import BatchDecoder
from backtrack.core_share import CoreShare, busy_seconds, core_share_for, threads_for
from backtrack.params import GenerationParams

TICKS = os.sysconf("SC_CLK_TCK")


class FakeMachine:
    """A /proc/stat file, a clock and this process's CPU time, all advanced by hand."""

    def __init__(self, directory: Path, cpus: int = 2) -> None:
        self.path = directory / "stat"
        self.cpus = cpus
        self.busy_ticks = [0] * cpus
        self.now = 0.0
        self.own = 0.0
        self.write()

    def write(self) -> None:
        total = sum(self.busy_ticks)
        lines = [f"cpu  {total} 0 0 100000 0 0 0 0 0 0"]
        lines += [
            f"cpu{i} {ticks} 0 0 50000 0 0 0 0 0 0" for i, ticks in enumerate(self.busy_ticks)
        ]
        self.path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 42", ""]))

    def advance(self, seconds: float, others: float, ours: float) -> None:
        """`others` and `ours`: cores' worth each used over the `seconds`."""
        used = (others + ours) * seconds * TICKS
        for cpu in range(self.cpus):
            self.busy_ticks[cpu] += round(used / self.cpus)
        self.own += ours * seconds
        self.now += seconds
        self.write()

    def share(self, most: int, applied: list[int]) -> CoreShare:
        return CoreShare(
            most,
            applied.append,
            interval=1.0,
            stat_path=self.path,
            cpus=set(range(self.cpus)),
            own_seconds=lambda: self.own,
            clock=lambda: self.now,
        )


def test_busy_seconds_sums_only_the_allowed_cpus(tmp_path):
    stat = "cpu  9 9 9 9\ncpu0 100 0 50 7 3 10 0 0\ncpu1 1000 0 0 0\nintr 5\n"
    assert busy_seconds(stat, {0}) == pytest.approx(160 / TICKS)
    assert busy_seconds(stat, {0, 1}) == pytest.approx(1160 / TICKS)


def test_a_busy_neighbour_takes_a_thread_and_gives_it_back_when_it_stops(tmp_path):
    machine, applied = FakeMachine(tmp_path), []
    share = machine.share(most=2, applied=applied)
    machine.advance(1.0, others=0.02, ours=2.0)
    assert share.follow() == 2 and applied == []  # a daemon's blip takes nothing
    machine.advance(1.0, others=0.9, ours=1.1)  # a single-threaded process beside us
    assert share.follow() == 1 and applied == [1]
    assert share.others == pytest.approx(0.9, abs=0.02)
    machine.advance(1.0, others=1.0, ours=1.0)
    assert share.follow() == 1 and applied == [1]  # unchanged: nothing applied again
    machine.advance(1.0, others=0.0, ours=1.0)  # it ended
    assert share.follow() == 2 and applied == [1, 2]


def test_the_count_moves_at_most_once_per_interval(tmp_path):
    machine, applied = FakeMachine(tmp_path), []
    share = machine.share(most=2, applied=applied)
    machine.advance(0.5, others=1.0, ours=1.0)
    assert share.follow() == 2  # half an interval: not measured yet
    machine.advance(0.5, others=1.0, ours=1.0)
    assert share.follow() == 1


def test_an_unreadable_stat_file_keeps_the_count_fixed(tmp_path):
    applied: list[int] = []
    share = CoreShare(2, applied.append, stat_path=tmp_path / "missing", cpus={0, 1})
    assert share.follow() == 2 and applied == []


@given(
    others=st.floats(min_value=0, max_value=64, allow_nan=False),
    cpus=st.integers(1, 64),
    most=st.integers(1, 64),
)
def test_threads_stay_between_one_and_the_most(others, cpus, most):
    assert 1 <= threads_for(others, cpus, most) <= most


@given(
    low=st.floats(min_value=0, max_value=32, allow_nan=False),
    extra=st.floats(min_value=0, max_value=32, allow_nan=False),
    cpus=st.integers(1, 64),
)
def test_busier_neighbours_never_get_us_more_threads(low, extra, cpus):
    assert threads_for(low + extra, cpus, cpus) <= threads_for(low, cpus, cpus)


def test_a_fixed_count_is_never_changed(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert core_share_for(setting=2, threads=2) is None  # the `threads` setting fixes it
    assert core_share_for(setting=None, threads=1) is None  # nothing to give up
    assert core_share_for(setting=None, threads=2) is not None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert core_share_for(setting=None, threads=2) is None


def test_the_decoder_sets_the_count_between_steps_and_decodes_the_same(
    tmp_path, tiny_model, char_tokenizer, backtrack_id
):
    """A busy neighbour appears while a batch runs: the next step runs on one thread fewer
    (torch's own pool, set between steps), and the tokens are the ones decoded without it."""
    params = GenerationParams(max_new_tokens=12, backtrack_policy="never", ignore_eos=True)
    prompt = char_tokenizer("12+34=")["input_ids"]

    def run(machine: FakeMachine | None, share: CoreShare | None) -> list[int]:
        decoder = BatchDecoder(tiny_model, char_tokenizer, backtrack_id, core_share=share)
        row = decoder.add(prompt, params)
        with torch.inference_mode():
            while decoder.rows:
                decoder.step()
                if machine is not None:
                    machine.advance(1.0, others=1.0, ours=1.0)
        return row.visible_ids

    alone = run(None, None)
    before = torch.get_num_threads()
    machine, applied = FakeMachine(tmp_path), []
    share = machine.share(most=2, applied=applied)

    def apply(count: int) -> None:
        applied.append(count)
        torch.set_num_threads(count)

    share.apply = apply
    try:
        assert run(machine, share) == alone
        assert applied == [1] and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
