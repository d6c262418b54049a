"""Which images of a domain a workflow uses: the subsample, its splits, its summary."""

from __future__ import annotations

import numpy as np

from diagnose.core import Arg, UsageError
from diagnose.data.domains import Domain

__all__ = [
    "check_two_classes",
    "domain_info",
    "drop_positions",
    "restricted_splits",
    "subsample",
]


def subsample(domain: Domain, max_samples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``max_samples`` items of ``domain``, drawn with ``seed``.

    Items the domain already failed to read (:meth:`Domain.readable`, counted in its
    warnings when it was loaded) are never drawn: reading them again would fail again
    and be reported twice.
    """
    pool = domain.readable()
    if max_samples is None or max_samples >= len(pool):
        return pool
    if max_samples < 1:
        raise UsageError(Arg("max_samples"), f" must be at least 1. Got {max_samples}.")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=max_samples, replace=False))


def restricted_splits(domain: Domain, used: np.ndarray, seed: int) -> dict[str, np.ndarray] | None:
    """The domain's stratified splits, restricted to ``used`` and re-indexed into it."""
    if domain.labels is None:
        return None
    # ``used`` is sorted: a binary search re-indexes a million images without a dict.
    out = {}
    for name, idx in domain.splits(seed).items():
        idx = np.asarray(idx, dtype=np.int64)
        pos = np.searchsorted(used, idx)
        found = pos < len(used)
        found[found] = used[pos[found]] == idx[found]
        out[name] = pos[found].astype(np.int64)
    return out


def drop_positions(
    used: np.ndarray, split: dict[str, np.ndarray] | None, skipped
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """``used`` and its ``split`` (positions into ``used``) without the positions ``skipped``.

    For images a reader left out (``CapturedFeatures.skipped``, the ``skipped``
    of ``materialize_readable``): the split's positions are re-indexed into
    the shorter ``used``, so they again index the rows that were read.

    Example:
        >>> drop_positions(np.array([3, 5, 8]), {"train": np.array([0, 2])}, [1])
        (array([3, 8]), {'train': array([0, 1])})
    """
    skipped = np.asarray(skipped, dtype=np.int64)
    if not skipped.size:
        return used, split
    keep = np.ones(len(used), dtype=bool)
    keep[skipped] = False
    new_position = np.cumsum(keep) - 1
    if split is not None:
        split = {k: new_position[v[keep[v]]].astype(np.int64) for k, v in split.items()}
    return used[keep], split


def check_two_classes(domain: Domain) -> None:
    """A labelled target needs two classes: probes and transferability scores compare classes."""
    if domain.labels is None:
        return
    present = np.unique(domain.labels[domain.labels >= 0])
    if len(present) == 1:
        name = domain._class_name(int(present[0]))
        raise ValueError(
            f"target '{domain.name}' has 1 class with images ({name!r}); the probes and "
            "transferability scores need at least 2: add images of another class "
            "(for an ImageFolder, a second sub-folder)."
        )


def domain_info(domain: Domain, used: np.ndarray, split: dict | None) -> dict:
    info = domain.summary()
    info["n_used"] = int(len(used))
    if split is not None:
        info.update({f"n_{k}": int(len(v)) for k, v in split.items()})
    return info
