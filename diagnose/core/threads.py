"""Torch's CPU threads, sized to the cores that other processes leave free.

Torch's intra-op threads meet at the end of every parallel region, so a region
runs at the pace of its slowest thread. When another CPU-bound process shares
the machine, a thread that shares a core with it holds every region back, and
OpenMP's spinning threads burn the time slices the others need. Measured on a
2-core machine with one competing single-threaded process: a resnet18 forward at
two threads took 3.3x its quiet time, at one thread 1.8x; a demo-CNN training
step at two threads 4.2x, at one thread 1.7x. Passive OpenMP waiting at two
threads was 2.0x under contention but cost 1.3-1.6x on the quiet machine, so the
threads are sized instead.

A workflow runs inside :func:`fitted_threads`: on entry, and at each
:func:`refresh_threads` call (capture passes, training epochs, race trials) at
most every ``REFRESH_S`` seconds, the torch thread count becomes the machine's
CPUs minus the runnable threads of other processes (``/proc/loadavg``'s running
count less this process's own running threads, the median of a few reads). It
is never raised above the count in force on entry (the user's or torch's
default) and is restored on exit. Off Linux (no ``/proc``) nothing changes.

Floating-point sums depend on the thread count, so two runs are bit-identical
only at the same count: ``DIAGNOSE_THREADS=fixed`` in the environment keeps the
count in force on entry whatever the load (the default is ``auto``).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

__all__ = [
    "THREADS_ENV_VAR",
    "REFRESH_S",
    "ThreadFit",
    "fitted_threads",
    "other_runnable",
    "refresh_threads",
    "thread_summary",
    "with_fitted_threads",
]

REFRESH_S = 2.0  # the shortest interval between two looks at the machine's load
_READS = 5  # reads of /proc per look; their median smooths short-lived processes
_READ_GAP_S = 0.004
THREADS_ENV_VAR = "DIAGNOSE_THREADS"
_MODES = ("auto", "fixed")

F = TypeVar("F", bound=Callable[..., Any])


def _own_running() -> int:
    n = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended between listing and reading
            continue
        n += stat[stat.rindex(")") + 2 : stat.rindex(")") + 3] == "R"
    return n


def other_runnable() -> float | None:
    """Runnable threads of other processes right now (the median of a few reads), or
    None where ``/proc`` cannot be read."""
    reads = []
    for i in range(_READS):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            reads.append(max(0, running - _own_running()))
        except (OSError, ValueError, IndexError):
            return None
        if i + 1 < _READS:
            time.sleep(_READ_GAP_S)
    return float(statistics.median(reads))


@dataclass
class ThreadFit:
    """The thread sizing of one workflow run: ``sampler`` gives the other processes'
    runnable threads (None: unknown, leave the count alone); ``fixed`` never looks."""

    ceiling: int
    cpus: int
    sampler: Callable[[], float | None] = other_runnable
    clock: Callable[[], float] = time.monotonic
    fixed: bool = False
    chosen: list[int] = field(default_factory=list)  # the count set at each look
    busy: list[float] = field(default_factory=list)  # the other runnable threads seen
    last_look: float | None = None

    def target(self, others: float) -> int:
        """The thread count for ``others`` runnable threads elsewhere: the free cores,
        between 1 and the ceiling."""
        free = int(self.cpus - round(others))
        return max(1, min(self.ceiling, free))

    def refresh(self, force: bool = False) -> None:
        """Look at the load (at most every ``REFRESH_S``) and set torch's threads."""
        now = self.clock()
        if self.fixed or (
            not force and self.last_look is not None and now - self.last_look < REFRESH_S
        ):
            return
        self.last_look = now
        others = self.sampler()
        if others is None:
            return
        want = self.target(others)
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
        self.busy.append(others)
        self.chosen.append(want)

    def summary(self) -> dict:
        """results.json's ``environment.threads``: what was chosen and why."""
        counts = [self.ceiling, *self.chosen]  # a change: a look that set another count
        return {
            "policy": f"fixed at {self.ceiling} ({THREADS_ENV_VAR}=fixed)"
            if self.fixed
            else (
                "torch CPU threads = CPUs minus other processes' runnable threads, "
                f"at most the {self.ceiling} in force at the start; re-checked at most every "
                f"{REFRESH_S:g} s at capture passes, epochs and race trials"
            ),
            "cpus": self.cpus,
            "ceiling": self.ceiling,
            "threads_start": self.chosen[0] if self.chosen else self.ceiling,
            "threads_min": min(self.chosen, default=self.ceiling),
            "threads_max": max(self.chosen, default=self.ceiling),
            "looks": len(self.chosen),
            "changes": sum(a != b for a, b in zip(counts, counts[1:])),
            "max_other_runnable": max(self.busy, default=None),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        }


_active: ThreadFit | None = None  # the outermost block's sizing


@contextmanager
def fitted_threads(
    sampler: Callable[[], float | None] | None = None,
    clock: Callable[[], float] | None = None,
) -> Iterator[ThreadFit]:
    """Size torch's CPU threads to the free cores for the duration of the block.

    Nested blocks share the outermost one's sizing. On exit the thread count in
    force on entry is restored.

    Args:
        sampler: the other processes' runnable threads (default: read from
            ``/proc``); for tests.
        clock: monotonic seconds (default ``time.monotonic``); for tests.

    Yields:
        The active :class:`ThreadFit`.
    """
    global _active
    if _active is not None:
        yield _active
        return
    mode = os.environ.get(THREADS_ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(
            f"environment variable {THREADS_ENV_VAR}={os.environ[THREADS_ENV_VAR]!r} is not one of "
            f"{', '.join(_MODES)}; unset it or set it to one of those."
        )
    before = torch.get_num_threads()
    _active = ThreadFit(
        ceiling=before,
        cpus=os.cpu_count() or before,
        sampler=sampler or other_runnable,
        clock=clock or time.monotonic,
        fixed=mode == "fixed",
    )
    try:
        _active.refresh(force=True)
        yield _active
    finally:
        _active = None
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def with_fitted_threads(fn: F) -> F:
    """Decorator: run ``fn`` inside :func:`fitted_threads`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with fitted_threads():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def refresh_threads() -> None:
    """Re-size the threads if a :func:`fitted_threads` block is active and its
    interval has passed; otherwise nothing."""
    if _active is not None:
        _active.refresh()


def thread_summary() -> dict | None:
    """The active block's :meth:`ThreadFit.summary`, or None outside one."""
    return None if _active is None else _active.summary()
