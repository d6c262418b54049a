"""Input validation shared by every probe.

Every public probe accepts numpy arrays or torch tensors. These helpers turn
them into numpy arrays of a known dtype and shape, or raise ``ValueError`` /
``TypeError`` with a message that names the argument, what was expected and
what was got (the scikit-learn message form).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "as_features",
    "as_labels",
    "as_probabilities",
    "check_choice",
    "check_int",
]


def _to_numpy(x: Any, name: str) -> np.ndarray:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu").numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(
        f"The '{name}' parameter must be a numpy array or a torch tensor. "
        f"Got {type(x).__name__} instead."
    )


def as_features(
    x: Any,
    name: str,
    *,
    dtype: type = np.float64,
    min_rows: int = 1,
    allow_nonfinite: bool = False,
) -> np.ndarray:
    """Return ``x`` as a 2-D ``dtype`` array of shape (n_samples, n_features).

    A 1-D input is read as one feature per sample. Raises ``ValueError`` for
    other ranks, too few rows, zero columns or non-finite values.
    """
    arr = _to_numpy(x, name)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.bool_)
    ):
        raise TypeError(f"The '{name}' parameter must hold numbers. Got dtype {arr.dtype} instead.")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(
            f"The '{name}' parameter must be 2-D (n_samples, n_features). "
            f"Got shape {tuple(arr.shape)} instead."
        )
    if arr.shape[0] < min_rows:
        raise ValueError(
            f"The '{name}' parameter needs at least {min_rows} samples. Got {arr.shape[0]} instead."
        )
    if arr.shape[1] == 0:
        raise ValueError(f"The '{name}' parameter has 0 features (shape {tuple(arr.shape)}).")
    arr = arr.astype(dtype, copy=False)
    if not allow_nonfinite and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(
            f"The '{name}' parameter contains {bad} NaN or infinite values; "
            "drop or impute them before measuring."
        )
    return arr


def as_labels(y: Any, name: str, n: int | None = None) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of class indices (length ``n`` if given)."""
    arr = _to_numpy(y, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            f"The '{name}' parameter must be 1-D (n_samples,). Got shape {tuple(arr.shape)} instead."
        )
    if n is not None and arr.shape[0] != n:
        raise ValueError(
            f"The '{name}' parameter must have {n} entries, one per sample. "
            f"Got {arr.shape[0]} instead."
        )
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise ValueError(f"The '{name}' parameter must hold integer class labels.")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"The '{name}' parameter must hold integer class labels. Got dtype {arr.dtype} instead."
        )
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"The '{name}' parameter must hold non-negative class labels.")
    return arr


def as_probabilities(p: Any, name: str, *, atol: float = 1e-3) -> np.ndarray:
    """Return ``p`` as a float64 (n, k) array whose rows are probability vectors."""
    arr = as_features(p, name)
    if arr.min() < -atol:
        raise ValueError(f"The '{name}' parameter must hold probabilities (>= 0).")
    sums = arr.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=atol):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(
            f"The '{name}' parameter must hold probabilities whose rows sum to 1 "
            f"(apply softmax to logits first). A row sums to {worst:.4g}."
        )
    return np.clip(arr, 0.0, None)


def check_choice(value: Any, name: str, owner: str, choices: set | tuple | list) -> None:
    """Raise the scikit-learn style error when ``value`` is not one of ``choices``."""
    if value not in choices:
        shown = "{" + ", ".join(repr(c) for c in sorted(choices, key=str)) + "}"
        raise ValueError(
            f"The '{name}' parameter of {owner} must be one of {shown}. Got {value!r} instead."
        )


def check_int(
    value: Any, name: str, owner: str, minimum: int = 1, *, allow_none: bool = False
) -> int | None:
    """``value`` as an int, or a ValueError naming the parameter unless it is an int >= ``minimum``.

    Example: ``check_int(folds, "folds", "linear_probe", 2)``.
    """
    if allow_none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        expected = "a positive int (>= 1)" if minimum == 1 else f"an int >= {minimum}"
        expected += " or None" if allow_none else ""
        raise ValueError(
            f"The '{name}' parameter of {owner} must be {expected}. Got {value!r} instead."
        )
    return int(value)
