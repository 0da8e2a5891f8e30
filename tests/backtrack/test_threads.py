"""Thread counts from what the process may really use, and idle threads that sleep."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from backtrack import threads


def write_cgroup_v2(root, text: str) -> None:
    (root / "cpu.max").write_text(text)


def test_the_cgroup_v2_quota_caps_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    write_cgroup_v2(tmp_path, "150000 100000\n")  # 1.5 CPUs of time: one whole thread
    assert threads.cpu_quota(tmp_path) == 1.5
    assert threads.available_cpus(tmp_path) == 1
    write_cgroup_v2(tmp_path, "400000 100000\n")
    assert threads.available_cpus(tmp_path) == 4
    write_cgroup_v2(tmp_path, "max 100000\n")
    assert threads.cpu_quota(tmp_path) is None
    assert threads.available_cpus(tmp_path) == 8


def test_the_cgroup_v1_quota_is_read_too(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)))
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.available_cpus(tmp_path) == 2
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert threads.available_cpus(tmp_path) == 4


def test_the_affinity_mask_bounds_the_cpus_without_a_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert threads.available_cpus(tmp_path) == 1


def test_omp_num_threads_wins_over_the_cpu_count_and_a_setting_over_both(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.default_threads() == 1
        assert threads.configure_threads() == 1
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.default_threads() == threads.available_cpus()
        assert threads.configure_threads(2) == 2
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="at least 1"):
            threads.configure_threads(0)
    finally:
        torch.set_num_threads(before)


def waits_after_import(**env: str) -> tuple[str, str]:
    """(OMP_WAIT_POLICY, GOMP_SPINCOUNT) as a fresh interpreter sees them after importing."""
    code = (
        "import os, server, training\n"
        "print(os.environ.get('OMP_WAIT_POLICY', '-'), os.environ.get('GOMP_SPINCOUNT', '-'))"
    )
    skipped = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    base = {key: value for key, value in os.environ.items() if key not in skipped}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True
    )
    policy, spins = result.stdout.split()
    return policy, spins


def test_importing_the_packages_bounds_the_spin_unless_the_environment_chose():
    assert waits_after_import() == ("-", threads.SHORT_SPIN)
    assert waits_after_import(OMP_WAIT_POLICY="ACTIVE") == ("ACTIVE", "-")
    assert waits_after_import(GOMP_SPINCOUNT="5") == ("-", "5")


@pytest.mark.parametrize(("cpus", "model_threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_a_server_leaves_one_core_to_its_http_side(monkeypatch, cpus, model_threads):
    """The event loop writes every streamed token: a model thread sharing its core waits for the
    scheduler at every parallel region, so the model gets one core fewer (never none)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda *args: cpus)
    assert threads.serving_threads() == model_threads
    assert threads.serving_threads(cpus) == model_threads


def test_a_server_takes_omp_num_threads_as_given(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setattr(threads, "available_cpus", lambda *args: 2)
    assert threads.serving_threads() == 2
