"""Thread sizing: the free cores, never above the entry count, restored on exit."""

from __future__ import annotations

import os

import pytest
import torch

from diagnose.core import (
    REFRESH_S,
    THREADS_ENV_VAR,
    ThreadFit,
    environment,
    fitted_threads,
    other_runnable,
    refresh_threads,
    thread_summary,
    with_fitted_threads,
)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_target_is_the_free_cores_between_one_and_the_ceiling():
    fit = ThreadFit(ceiling=4, cpus=8)
    assert [fit.target(o) for o in (0, 3, 4, 5, 7, 8, 30)] == [4, 4, 4, 3, 1, 1, 1]
    assert ThreadFit(ceiling=1, cpus=2).target(0) == 1
    # A median of reads can be a half: 1.5 others on 2 CPUs rounds to 2 busy, so 1 thread.
    assert ThreadFit(ceiling=2, cpus=2).target(1.5) == 1


def test_a_competing_process_takes_a_thread_and_exit_restores(two_threads):
    with fitted_threads(sampler=lambda: 1.0) as fit:
        assert torch.get_num_threads() == max(1, min(2, fit.cpus - 1))
    assert torch.get_num_threads() == 2


def test_never_raised_above_the_entry_count():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with fitted_threads(sampler=lambda: 0.0):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_refresh_waits_for_its_interval_then_follows_the_load(two_threads):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPUs to show a change")
    load = {"others": (os.cpu_count() or 2) - 1.0}  # one core free: one thread
    clock = Clock()
    with fitted_threads(sampler=lambda: load["others"], clock=clock) as fit:
        assert torch.get_num_threads() == 1
        load["others"] = 0.0
        clock.t = REFRESH_S / 2
        refresh_threads()  # too soon: no look
        assert torch.get_num_threads() == 1
        clock.t = REFRESH_S * 1.01
        refresh_threads()
        assert torch.get_num_threads() == 2
        summary = fit.summary()
    assert summary["threads_start"] == 1 and summary["threads_max"] == 2
    assert summary["changes"] == 2 and summary["looks"] == 2
    assert summary["ceiling"] == 2


def test_unknown_load_changes_nothing(two_threads):
    with fitted_threads(sampler=lambda: None) as fit:
        assert torch.get_num_threads() == 2
        assert fit.summary()["looks"] == 0


def test_nested_blocks_share_the_outer_sizing(two_threads):
    with fitted_threads(sampler=lambda: 0.0) as outer:
        with fitted_threads(sampler=lambda: 99.0) as inner:
            assert inner is outer
            assert torch.get_num_threads() == 2


def test_environment_records_the_sizing_only_inside_a_block(two_threads):
    assert thread_summary() is None
    assert environment("cpu", 0)["threads"] is None
    with fitted_threads(sampler=lambda: 0.0):
        env = environment("cpu", 0)
    assert env["threads"]["ceiling"] == 2
    assert env["threads"]["threads_start"] == env["cpu_threads"]


def test_decorator_keeps_the_signature_and_restores(two_threads):
    @with_fitted_threads
    def work(a: int, *, b: int = 1) -> int:
        """Doc."""
        assert thread_summary() is not None
        torch.set_num_threads(1)  # whatever the body does, the caller's count comes back
        return a + b

    assert work(1, b=2) == 3
    assert work.__doc__ == "Doc." and work.__name__ == "work"
    assert torch.get_num_threads() == 2


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="needs Linux /proc")
def test_other_runnable_reads_proc():
    others = other_runnable()
    assert others is not None and others >= 0


def test_fixed_mode_keeps_the_count_whatever_the_load(two_threads, monkeypatch):
    monkeypatch.setenv(THREADS_ENV_VAR, "fixed")
    with fitted_threads(sampler=lambda: 99.0) as fit:
        assert torch.get_num_threads() == 2
        assert fit.summary()["policy"].startswith("fixed at 2")


def test_an_unknown_mode_is_a_one_line_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(THREADS_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"DIAGNOSE_THREADS='fast' is not one of auto, fixed"):
        with fitted_threads():
            pass
