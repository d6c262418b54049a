"""Solve-ready probe features (private): standardised on the training split,
rotated into their principal basis where that pays, served in row blocks.

The rotation is an orthogonal change of variables ``W = V Z``: logits
``X W = (X V) Z`` and penalty ``||W||^2 = ||Z||^2`` are unchanged, so it is the
same problem. For ``d > n`` the optimum lies in the row space of the training
rows (every fold's rows are a subset), so keeping only those ``r <= n``
directions is exact. In this basis the feature columns are uncorrelated with
variances ``e_j``.

Rows are processed in fixed blocks of about ``_BLOCK_ELEMS`` values, the same
blocks whether the solve-ready features are kept in memory or, for a
``numpy.memmap`` or another lazily read array (``stream=True``), rebuilt from
the raw rows at every evaluation; the two give bit-identical results, and the
streamed one never holds more than one block of ``x`` in memory. The mean,
standard deviation and covariance are accumulated block by block in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Design", "prepare", "row_blocks"]

# Values of x per row block (at least _BLOCK_ROWS rows): a float64 block is
# 2 MiB, far under any X worth streaming, and large enough that the per-block
# overhead (a few tensor ops) stays a few percent of the block's products.
_BLOCK_ELEMS = 1 << 18
_BLOCK_ROWS = 64


def row_blocks(n: int, d: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` row blocks every pass over an (n, d) array uses."""
    step = max(_BLOCK_ROWS, _BLOCK_ELEMS // max(1, d))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _rows64(x: Any, a: int, b: int) -> np.ndarray:
    """Rows ``a:b`` as a float64 array the caller may modify in place."""
    return np.array(x[a:b], dtype=np.float64)  # always a copy: never write into x


@dataclass
class Design:
    """Solve-ready features (standardised, maybe rotated, with a trailing
    intercept column) of the training split, served in row blocks.

    ``evals`` (r+1,) column variances (1 for the intercept), ``pen`` (r+1,) 1
    for features and 0 for the intercept, ``basis`` (d, r) float64 numpy
    mapping solve coordinates back to the standardised features (``None``:
    the identity), and the standardisation ``mean`` / ``scale``. ``blocks``
    holds ``(f, f.T contiguous)`` per block when kept in memory; ``None`` when
    streamed from ``source``.
    """

    source: Any
    bounds: list[tuple[int, int]]
    blocks: list[tuple[torch.Tensor, torch.Tensor]] | None
    evals: torch.Tensor
    pen: torch.Tensor
    basis: np.ndarray | None
    mean: np.ndarray
    scale: np.ndarray
    device: torch.device
    dtype: torch.dtype

    @property
    def n(self) -> int:
        return self.bounds[-1][1]

    @property
    def width(self) -> int:
        return len(self.pen)

    def transform(self, x: Any, a: int, b: int) -> torch.Tensor:
        """Rows ``a:b`` of raw features ``x`` in solve coordinates (b-a, r+1)."""
        xs = _rows64(x, a, b)
        xs -= self.mean  # in place: a block of x is the only float64 copy held
        xs /= self.scale
        xs = torch.as_tensor(xs, dtype=self.dtype)
        xs = xs.to(self.device)
        if self.basis is not None:
            xs = xs @ self._basis_t
        return torch.cat([xs, xs.new_ones(len(xs), 1)], dim=1)

    def __post_init__(self) -> None:
        if self.basis is not None:
            self._basis_t = torch.as_tensor(self.basis, dtype=self.dtype, device=self.device)

    def iter_blocks(self) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
        """``(start, stop, f, f.T)`` per row block of the training split."""
        for i, (a, b) in enumerate(self.bounds):
            if self.blocks is not None:
                yield a, b, *self.blocks[i]
            else:
                f = self.transform(self.source, a, b)
                yield a, b, f, f.T

    def block_logits(self, z: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, logits (B, K, rows))`` per block of the design's own rows, from
        the kept (or rebuilt) solve-ready blocks: no raw row is standardised again."""
        b_, k, p = z.shape
        flat = z.reshape(b_ * k, p)
        for a, b, _, f_t in self.iter_blocks():
            yield a, b, (flat @ f_t).view(b_, k, b - a)

    def logits(self, x: Any, z: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, stop, logits (B, K, rows))`` per block of raw features ``x``."""
        b_, k, p = z.shape
        flat = z.reshape(b_ * k, p)
        for a, b in row_blocks(x.shape[0], self.mean.shape[0]):
            yield a, b, (flat @ self.transform(x, a, b).T).view(b_, k, b - a)


def _stats(x: Any, bounds: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, scale (the population standard deviation, 1 for a constant
    column) and the raw standard deviation per column; two passes in float64."""
    n = bounds[-1][1]
    total = sum(_rows64(x, a, b).sum(axis=0) for a, b in bounds)
    mean = total / n
    sq = sum((_sub_sq(_rows64(x, a, b), mean)).sum(axis=0) for a, b in bounds)
    std = np.sqrt(sq / n)
    # A constant column carries no information; scale 1 keeps it at 0 instead
    # of dividing by zero (relative test: a large constant has round-off spread).
    scale = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)
    return mean, scale, std


def _sub_sq(rows: np.ndarray, mean: np.ndarray) -> np.ndarray:
    rows -= mean
    rows *= rows
    return rows


def _rotates(n: int, d: int, stream: bool) -> bool:
    """Whether the principal rotation pays for itself: the eigendecomposition
    costs about min(n, d)^3, the solve about n x d per step. It wins when
    ``d <= n / 4`` (cheap, and correlated columns slow L-BFGS down) and when
    ``d > 2 n`` (the solve shrinks from d to n columns; in memory only: its
    basis is as large as x)."""
    return 4 * d <= n or (d > 2 * n and not stream)


def prepare(x_train: Any, device: torch.device, dtype: torch.dtype, *, stream: bool) -> Design:
    """Standardise with the training split's statistics and, where it pays
    (:func:`_rotates`), rotate into the principal basis. ``x_train`` is any
    (n, d) array that slices into numpy rows; with ``stream`` its blocks are
    rebuilt at every pass instead of being kept."""
    n, d = x_train.shape
    bounds = row_blocks(n, d)
    mean, scale, raw_std = _stats(x_train, bounds)
    basis = None
    if not _rotates(n, d, stream):
        # Standardised coordinates: every column has variance 1 (0 if constant).
        evals = torch.as_tensor((raw_std / scale) ** 2)
    else:
        # torch for the products, at the caller's torch thread count.
        def std64(a: int, b: int) -> torch.Tensor:
            rows = _rows64(x_train, a, b)
            rows -= mean
            rows /= scale
            return torch.from_numpy(rows)

        if d <= n:
            cov = torch.zeros(d, d, dtype=torch.float64)
            for a, b in bounds:
                xs = std64(a, b)
                cov += xs.T @ xs
            evals, vecs = torch.linalg.eigh(cov / n)
        else:
            xs = std64(0, n)
            evals, u = torch.linalg.eigh(xs @ xs.T / n)
        # Directions with no variance (constant or duplicated columns, d > n)
        # only carry penalty: their optimal weight is exactly zero.
        keep = evals > 1e-9 * max(float(evals[-1]), np.finfo(np.float64).tiny)
        evals = evals[keep]
        basis_t = vecs[:, keep] if d <= n else xs.T @ (u[:, keep] / torch.sqrt(n * evals))
        basis = basis_t.numpy()
    evals = torch.cat([evals, evals.new_ones(1)]).to(dtype=dtype, device=device)
    pen = torch.ones(len(evals), dtype=dtype, device=device)
    pen[-1] = 0.0
    design = Design(x_train, bounds, None, evals, pen, basis, mean, scale, device, dtype)
    if not stream:
        design.blocks = [(f, f.T.contiguous()) for _, _, f, _ in design.iter_blocks()]
    return design
