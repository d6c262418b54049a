"""CPU threads: the caller's to set, once; the library never changes them.

Every measurement runs at the torch and BLAS thread counts in force: a Python
caller's ``torch.set_num_threads`` and ``threadpoolctl`` settings hold (one
exception: the probes' solver runs its own vector algebra on one BLAS thread for
the length of a solve, :mod:`probes._solver`), and
floating-point sums (which depend on the thread count) are the same from one run
to the next whatever the machine's load. The ``diagnose`` CLI sets them once, at
start, from ``--threads N`` (default: torch's own default): torch's intra-op
threads, and through ``threadpoolctl`` the BLAS and OpenMP pools that NumPy, SciPy
and scikit-learn use. results.json records the counts in force
(``environment.threads``).

Example:
    >>> set_threads(1)  # what ``diagnose assess --threads 1`` does before it starts
    >>> thread_summary()["torch_threads"]
    1
"""

from __future__ import annotations

import os

import torch
from threadpoolctl import threadpool_info, threadpool_limits

__all__ = ["set_threads", "thread_summary"]

_set_by: str | None = None  # the flag that set the counts, when the CLI did


def set_threads(n: int | None, *, source: str = "--threads") -> None:
    """Set torch's and the BLAS libraries' CPU threads to ``n`` for the rest of the process.

    Args:
        n: a positive thread count; None leaves every setting as it is.
        source: what asked for it, recorded in :func:`thread_summary`.

    Raises:
        ValueError: ``n`` is not a positive whole number.
    """
    global _set_by
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(
            "The 'n' parameter of set_threads (the CLI's --threads) must be a positive whole "
            f"number. Got {n!r} instead."
        )
    torch.set_num_threads(n)
    # Not a context: the limits hold for the CLI's process, as torch's count does.
    threadpool_limits(limits=n)
    _set_by = f"{source} {n}"


def thread_summary() -> dict:
    """results.json's ``environment.threads``: the thread counts in force and who set them."""
    pools = threadpool_info()
    blas = [p["num_threads"] for p in pools if p.get("user_api") == "blas"]
    openmp = [p["num_threads"] for p in pools if p.get("user_api") == "openmp"]
    return {
        "torch_threads": torch.get_num_threads(),
        "blas_threads": max(blas) if blas else None,
        "openmp_threads": max(openmp) if openmp else None,
        "cpus": os.cpu_count(),
        "set_by": _set_by or "the caller (torch's default unless the caller changed it)",
    }
