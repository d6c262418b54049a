"""Linear probes: how linearly decodable are the labels from a layer's features?

:func:`linear_probe` fits a multinomial logistic regression on standardised
features, picks its L2 strength by stratified k-fold cross-validation on the
training split only, refits on the whole training split and reports the test
accuracy with a 95% Wilson interval.

Parametrisation of the strength: the fitted objective is

    mean_i CE(softmax(x_i W + b), y_i) + l2/2 * ||W||_F^2      (b unpenalised)

on features standardised with the training split's mean and standard
deviation. This is scikit-learn's multinomial ``LogisticRegression`` objective
with ``l2 = 1 / (C * n)`` (n: rows the model is fitted on), so the same ``l2``
means the same shrinkage for a fold and for the full training split. With 2
classes the two softmax columns split the weight (W1 = -W0), so it equals
binary logistic regression with ``C = 2 / (l2 * n)``.

How it is fast (see :mod:`probes._probe_fit` and :mod:`probes._solver`): all CV
folds (scikit-learn's shuffled ``StratifiedKFold``) and the full training split
are solved together as one stacked problem by scipy's L-BFGS-B (one feature
product in float32 per evaluation for all of them), walking the grid from strong
to weak, each strength warm-started from the previous solutions, and stopping two
strengths past the best CV accuracy; the features are rotated into their
principal basis where that pays (an orthogonal change of variables: same
objective, same penalty; for ``d > 2n`` an exact reduction to the row space),
and ``1 / (c * variance + l2)`` preconditions L-BFGS as a change of variables.
Strengths are ranked at a gradient tolerance of 1e-3; the chosen one is then
polished to 1e-4, going on from where the path's solve of the full split stopped
(in float64, from zero, when float32 products leave the line search no lower
point to find).
The result says how many iterations that took and whether it converged.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from probes._design import prepare, row_blocks
from probes._probe_fit import (
    cv_path,
    fold_ids,
    geometric_middle,
    predict,
)
from probes._validation import as_features, as_labels, check_int

__all__ = ["DEFAULT_L2_GRID", "ProbeResult", "linear_probe", "wilson_interval"]

#: Default L2 strengths (the ``l2`` above), strong to weak. With standardised
#: features and n in the thousands this spans sklearn's C from about 1e-4 to 10.
DEFAULT_L2_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(1, -4, 9))

_Z95 = 1.959963984540054  # two-sided 95% normal quantile
# Largest gradient entry at convergence: scikit-learn's lbfgs default for the
# reported model; the selection along the path only needs the ranking of
# strengths, which a 10x looser tolerance leaves intact at a third less work.
_TOL = 1e-4
_PATH_TOL = 1e-3


@dataclass
class ProbeResult:
    """Outcome of one linear probe.

    Attributes:
        accuracy: fraction of test rows predicted correctly, in [0, 1]; test
            labels never seen in training count as errors.
        ci: 95% Wilson score interval ``(lo, hi)`` of ``accuracy``.
        n_train, n_test: rows in each split.
        n_classes: distinct labels in the training split.
        l2: the chosen strength (mean cross-entropy + l2/2 ||W||^2).
        cv_accuracy: mean accuracy over the validation folds at ``l2``; ``None``
            when no cross-validation was run (see ``note``).
        chance: test accuracy of always predicting the most frequent training
            class, the floor ``accuracy`` should be read against.
        folds: folds actually used (0 when no cross-validation was run).
        note: why the folds were reduced or cross-validation skipped, else ``None``.
        n_iter: L-BFGS iterations of the final fit at ``l2``.
        converged: whether that fit converged (its gradient within tolerance, or
            its objective no longer changing); a probe that did not (the
            iteration limit, or a line search that failed) may score below what
            the features allow, and warns with a ``ConvergenceWarning``.
        stop_reason: why the final fit stopped (scipy's words, or ours).

    Example:
        >>> r = linear_probe(f_train, y_train, f_test, y_test)  # doctest: +SKIP
        >>> r.accuracy, r.ci, r.chance  # doctest: +SKIP
        (0.87, (0.85, 0.89), 0.1)
    """

    accuracy: float
    ci: tuple[float, float]
    n_train: int
    n_test: int
    n_classes: int
    l2: float
    cv_accuracy: float | None
    chance: float
    folds: int = 0
    note: str | None = None
    n_iter: int = 0
    converged: bool = True
    stop_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; ``ci`` as a 2-list."""
        out = asdict(self)
        out["ci"] = [float(self.ci[0]), float(self.ci[1])]
        for key in ("accuracy", "l2", "chance"):
            out[key] = float(out[key])
        if self.cv_accuracy is not None:
            out["cv_accuracy"] = float(self.cv_accuracy)
        return out


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``.

    Better than the normal interval near 0 and 1 and for small ``n``. The
    returned bounds always satisfy ``0 <= lo <= successes / n <= hi <= 1``
    exactly: the formula's endpoints are clamped to [0, 1] and to the point
    estimate, which rounding alone can miss (for ``successes == n`` the upper
    bound is 1 in exact arithmetic but can come out 0.9999999999999999, and
    the lower bound for ``successes == 0`` can come out 1e-17 instead of 0).
    ``n == 0`` gives the uninformative ``(0.0, 1.0)``.

    Example:
        >>> tuple(round(v, 4) for v in wilson_interval(8, 10))
        (0.4902, 0.9433)
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = min(max(0.0, centre - half), p)
    hi = max(min(1.0, centre + half), p)
    return (lo, hi)


# Up to this many values an in-memory input is validated by copying it to
# float64 (cheap); above it, and for memmaps and other lazily read arrays,
# it is checked and used block by block so no full float64 copy is ever made.
_COPY_ELEMS = 1 << 22


def _is_lazy(x: Any) -> bool:
    """A ``numpy.memmap``, or an array-like read by slicing (h5py, zarr, ...)."""
    if isinstance(x, np.memmap):
        return True
    if isinstance(x, (np.ndarray, torch.Tensor, list, tuple)):
        return False
    return all(hasattr(x, a) for a in ("shape", "dtype", "__getitem__"))


def _features(x: Any, name: str) -> tuple[Any, bool]:
    """``x`` checked as (n, d) finite numeric features, and whether to stream it.

    Small in-memory inputs become float64 copies (:func:`as_features`); large
    ones and lazy ones are checked one row block at a time and kept as they are.
    """
    lazy = _is_lazy(x)
    if not lazy:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray) or x.size <= _COPY_ELEMS:
            return as_features(x, name), False
    dtype = np.dtype(x.dtype)
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise TypeError(f"The '{name}' parameter must hold numbers. Got dtype {dtype} instead.")
    if len(x.shape) == 1 and isinstance(x, np.ndarray):
        x = x[:, None]
    if len(x.shape) != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"The '{name}' parameter must be 2-D (n_samples, n_features) with at least one "
            f"of each. Got shape {tuple(x.shape)} instead."
        )
    bad = sum(int((~np.isfinite(np.asarray(x[a:b]))).sum()) for a, b in row_blocks(*x.shape))
    if bad:
        raise ValueError(
            f"The '{name}' parameter contains {bad} NaN or infinite values; "
            "drop or impute them before measuring."
        )
    return x, lazy


def _check_grid(l2_grid: Any) -> list[float]:
    if l2_grid is None:
        return list(DEFAULT_L2_GRID)
    try:
        arr = np.asarray(l2_grid, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr) & (arr > 0)):
        raise ValueError(
            "The 'l2_grid' parameter of linear_probe must be a non-empty 1-D sequence of "
            f"positive finite numbers. Got {l2_grid!r} instead."
        )
    return sorted({float(v) for v in arr}, reverse=True)


def _resolve_device(device: str | torch.device | None, x: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(x, torch.Tensor):
        return x.device
    return torch.device("cpu")


def _choose_folds(counts: np.ndarray, classes: np.ndarray, folds: int, n_grid: int):
    """Folds to use (0 = no cross-validation) and a note when not ``folds``."""
    if n_grid == 1:
        return 0, "a single l2 value was given: no cross-validation"
    rarest = int(np.argmin(counts))
    least = int(counts[rarest])
    if least >= folds:
        return folds, None
    if least >= 2:
        return least, (
            f"folds reduced from {folds} to {least}: training class {int(classes[rarest])} "
            f"has only {least} examples"
        )
    return 0, (
        f"no cross-validation: training class {int(classes[rarest])} has a single example; "
        "l2 fixed at the geometric middle of the grid"
    )


def _check_shapes(xtr, ytr, xte, yte) -> None:
    """One label per row in each split, and the same features in both."""
    for x, y, xn, yn in ((xtr, ytr, "x_train", "y_train"), (xte, yte, "x_test", "y_test")):
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"'{xn}' has shape {x.shape} but '{yn}' has shape {y.shape}: they must have "
                "the same number of rows (one label per example)."
            )
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"'x_train' has shape {xtr.shape} but 'x_test' has shape {xte.shape}: they must "
            "have the same number of features (columns)."
        )


def _not_converged(n_iter: int, message: str) -> str:
    """The warning of a probe that stopped short of its tolerance, with the fix that applies:
    more iterations for the iteration limit; for a line search that found no lower point
    (scipy's "ABNORMAL"), the objective is flat to float precision where it stopped, which
    more iterations do not change."""
    head = f"linear_probe did not converge after {n_iter} L-BFGS iterations ({message.strip()})"
    if message.upper().startswith("ABNORMAL"):
        return (
            f"{head}: the line search found no lower point, so the objective is flat to float "
            "precision there and the accuracy is that of the point reached; scale the features "
            "if their magnitudes differ widely."
        )
    return f"{head}: raise max_iter, or scale the features."


def _polish(design, xtr, y_idx, n_classes: int, lam: float, warm, max_iter: int, stream: bool):
    """``(design, path)`` of the chosen strength solved to the reported tolerance, going on
    from where the path's full-split solve stopped there (``warm``)."""
    final = cv_path(
        design, y_idx, n_classes, None, 0, [lam], max_iter=max_iter, tol=_TOL, warm=warm
    )
    stalled = not final.converged[0] and final.messages[0].startswith("ABNORMAL")
    if stalled and design.device.type != "mps":  # MPS has no float64
        # The line search found no lower point the float32 products resolve (near the
        # optimum of a small, separable problem): the chosen strength in float64.
        design = prepare(xtr, design.device, torch.float64, stream=stream)
        final = cv_path(design, y_idx, n_classes, None, 0, [lam], max_iter=max_iter, tol=_TOL)
    return design, final


def linear_probe(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    l2_grid: Any = None,
    folds: int = 3,
    max_iter: int = 200,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Test accuracy of a cross-validated multinomial logistic-regression probe.

    Features are standardised with the training split's mean and (population)
    standard deviation; constant columns become 0. The L2 strength ``l2`` of
    ``mean CE + l2/2 ||W||^2`` (sklearn's ``C = 1 / (l2 n)``) is chosen by
    stratified ``folds``-fold cross-validation on the training split only: the
    grid is walked from strong to weak with warm starts, every fold solved at
    once, and the walk stops two strengths after the best mean validation
    accuracy so far (ties go to the stronger strength). The model refitted on
    the whole training split at that strength (solved along the same path) is
    scored on the test split, which plays no part in the choice.

    Args:
        x_train, x_test: (n, d) and (m, d) features, numpy or torch, or a
            ``numpy.memmap`` / lazily sliced array-like (h5py, zarr): those,
            and in-memory inputs over 4M values, are validated, standardised
            and solved one row block (about 2^18 values) at a time, so no full
            float64 copy is made; a memmap gives the same result as the array.
        y_train, y_test: non-negative integer labels, any values: they are
            remapped to 0..K-1 from the training labels; a test label never
            seen in training counts as an error.
        l2_grid: candidate strengths; default :data:`DEFAULT_L2_GRID`
            (9 values, 10 down to 1e-4, log-spaced).
        folds: cross-validation folds (>= 2). If the rarest training class has
            fewer examples, folds drop to that count; if it has one example,
            cross-validation is skipped and ``l2`` is the geometric middle of
            the grid (``note`` says which happened). A one-value grid is used
            as is, without cross-validation.
        max_iter: L-BFGS iterations per strength. Solves stop earlier once the
            largest gradient entry is below 1e-3 while strengths are ranked,
            and below 1e-4 (sklearn's default) for the reported model.
        device: where to solve; default the device of ``x_train`` if it is a
            tensor, else CPU. Solves run in float32 (the standardisation and
            accuracies in float64; a polish that stalls in float32 is solved
            again in float64, and ``n_iter`` is then that solve's; not on MPS,
            which has no float64: the probe then warns), at the caller's torch
            threads.
        seed: seeds the fold assignment; results are deterministic given it.

    Returns:
        :class:`ProbeResult`.

    Raises:
        ValueError: fewer than 2 training classes, rows or feature counts that
            do not match (the message names the shapes), non-finite values,
            or invalid parameters. TypeError: non-numeric inputs.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 300)
        >>> x = rng.normal(size=(300, 8)) + 3 * np.eye(8)[y]
        >>> r = linear_probe(x[:200], y[:200], x[200:], y[200:])
        >>> r.accuracy > 0.9, r.n_classes
        (True, 3)
    """
    grid = _check_grid(l2_grid)
    folds = check_int(folds, "folds", "linear_probe", 2)
    max_iter = check_int(max_iter, "max_iter", "linear_probe", 1)
    seed = check_int(seed, "seed", "linear_probe", 0)
    dev = _resolve_device(device, x_train)
    xtr, stream = _features(x_train, "x_train")
    xte, _ = _features(x_test, "x_test")
    ytr = as_labels(y_train, "y_train")
    yte = as_labels(y_test, "y_test")
    _check_shapes(xtr, ytr, xte, yte)
    classes, y_idx = np.unique(ytr, return_inverse=True)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(
            f"'y_train' holds a single class (label {int(classes[0])}); a probe needs at "
            "least 2 classes in the training split."
        )
    counts = np.bincount(y_idx, minlength=n_classes)
    k, note = _choose_folds(counts, classes, folds, len(grid))
    design = prepare(xtr, dev, torch.float32, stream=stream)
    if k:
        fold = fold_ids(y_idx, k, seed)
        path = cv_path(design, y_idx, n_classes, fold, k, grid, max_iter=max_iter, tol=_PATH_TOL)
        best = int(np.argmax(path.scores))  # first maximum: the strongest of ties
        lam, cv_acc, warm = grid[best], path.scores[best], path.warm
    else:
        lam = grid[0] if len(grid) == 1 else geometric_middle(grid)
        cv_acc, warm = None, None
    design, final = _polish(design, xtr, y_idx, n_classes, lam, warm, max_iter, stream)
    pred = predict(design, xte, final.fulls[0])
    pos = np.clip(np.searchsorted(classes, yte), 0, n_classes - 1)
    yte_idx = np.where(classes[pos] == yte, pos, -1)  # unseen labels never match
    n_test = len(yte)
    correct = int(np.sum(pred == yte_idx))
    if not final.converged[0]:
        warnings.warn(
            _not_converged(final.iters[0], final.messages[0]), ConvergenceWarning, stacklevel=2
        )
    return ProbeResult(
        accuracy=correct / n_test,
        ci=wilson_interval(correct, n_test),
        n_train=len(ytr),
        n_test=n_test,
        n_classes=n_classes,
        l2=float(lam),
        cv_accuracy=cv_acc,
        chance=float(np.mean(yte_idx == int(np.argmax(counts)))),
        folds=k,
        note=note,
        n_iter=final.iters[0],
        converged=final.converged[0],
        stop_reason=final.messages[0],
    )
