"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time

__all__ = ["best_time", "timed"]


def timed(fn):
    """``(wall seconds, result)`` of one call of ``fn``."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def best_time(fn, repeats, warmup=False):
    """Smallest wall time over ``repeats`` calls (robust to a busy machine) and the last result.

    ``warmup``: one untimed call first, for one-off costs (kernel selection, lazy imports).
    """
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        t, out = timed(fn)
        times.append(t)
    return min(times), out
