"""Loading image domains: demo digits, ImageFolder directories, ``module:function`` datasets.

A *domain* is a labelled (or unlabelled) set of images with what the rest of
the tool needs to know about it without decoding every image: labels, class
names, native channels and sizes.

Example:
    >>> d = load_domain("demo:digits-invert")
    >>> len(d.dataset), d.channels, d.native_size
    (896, 1, (32, 32))
    >>> parts = d.splits(seed=0)   # stratified train / val / test indices
"""

from __future__ import annotations

import warnings as _warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from diagnose.core import is_callable_spec
from diagnose.data.demo_data import DEMO_DOMAINS, TensorImageDataset, demo_arrays
from diagnose.data.imagefolder import ImageFolderDataset, scan_image_folder
from diagnose.data.userdata import callable_domain_fields, size_facts

__all__ = [
    "Domain",
    "load_domain",
    "undecodable_note",
]


# The train, val and test fractions of :meth:`Domain.splits`.
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass
class Domain:
    """A set of images from one domain, with what is known about it up front.

    Attributes:
        name: the spec as given (``"demo:digits-noise"``, a path, ``"pkg.mod:fn"``).
        dataset: item ``i`` is ``(image, label)``: a float32 tensor C x H x W in
            [0, 1] and an int (-1 when unlabelled).
        labels: int64 label per item, known without decoding images; None when unlabelled.
        classes: class names, index = label; None when unlabelled.
        channels: native channels of the images (1 or 3).
        native_size: (H, W) when every image has that size, else None.
        size_range: smallest and largest (H, W) seen.
        description: one human-readable line.
        warnings: problems met while loading (skipped files, assumptions).
        unreadable: items whose read already raised while loading (counted in
            ``warnings``); no split holds them and no workflow reads them again.
    """

    name: str
    dataset: Dataset
    labels: np.ndarray | None
    classes: list[str] | None
    channels: int
    native_size: tuple[int, int] | None
    size_range: tuple[tuple[int, int], tuple[int, int]]
    description: str
    warnings: list[str] = field(default_factory=list)
    unreadable: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        # Said with the other loading problems, so that every workflow's results carry it
        # (the splits themselves are drawn later, after the results' warnings are read).
        note = self._too_small_note(DEFAULT_FRACTIONS)
        if note and note not in self.warnings:
            self.warnings.append(note)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _too_small_note(self, fractions: Sequence[float]) -> str | None:
        """The warning naming the classes with fewer readable items than ``fractions`` has
        splits (they go wholly to train), or None."""
        if self.labels is None:
            return None
        needed = int(sum(f > 0 for f in fractions))
        values, counts = np.unique(self.labels[self.readable()], return_counts=True)
        too_small = [self._class_name(int(c)) for c, n in zip(values, counts) if n < needed]
        if not too_small:
            return None
        return (
            f"{len(too_small)} class(es) of {self.name} have too few items to split "
            f"and were put in train only: {', '.join(too_small[:5])}"
        )

    def splits(
        self, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
    ) -> dict[str, np.ndarray]:
        """Disjoint ``"train"``, ``"val"``, ``"test"`` index arrays covering every readable item.

        Items that could not be read while loading (:meth:`readable`) are in none of
        them. Stratified by label when labelled (each class is split by
        ``fractions``, every split getting at least one item of a class that
        has at least three), deterministic given ``seed``, indices sorted. A
        class with fewer items than there are non-empty splits goes wholly to
        train, with a warning.

        Example:
            >>> s = load_domain("demo:digits").splits(seed=0)
            >>> sorted(s), sum(len(v) for v in s.values())
            (['test', 'train', 'val'], 901)
        """
        fr = _check_fractions(fractions)
        rng = np.random.default_rng(seed)
        ok = self.readable()
        groups = (
            [ok]
            if self.labels is None
            else [ok[self.labels[ok] == c] for c in np.unique(self.labels[ok])]
        )
        needed = int(sum(f > 0 for f in fr))
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
        for idx in groups:
            idx = rng.permutation(idx)
            if len(idx) < needed:
                parts["train"].append(idx)
                continue
            n_val = max(1, round(len(idx) * fr[1])) if fr[1] > 0 else 0
            n_test = max(1, round(len(idx) * fr[2])) if fr[2] > 0 else 0
            n_train = len(idx) - n_val - n_test
            if n_train < 1:  # rounding up val and test took everything
                n_test -= 1 - n_train
                n_train = 1
            parts["train"].append(idx[:n_train])
            parts["val"].append(idx[n_train : n_train + n_val])
            parts["test"].append(idx[n_train + n_val :])
        msg = self._too_small_note(fr)
        if msg and msg not in self.warnings:  # said once: in the warnings, and to Python's
            self.warnings.append(msg)
            _warnings.warn(msg, stacklevel=2)
        return {
            k: np.sort(np.concatenate(v)).astype(np.int64) if v else np.zeros(0, np.int64)
            for k, v in parts.items()
        }

    def readable(self) -> np.ndarray:
        """Sorted indices of the items not already known to be unreadable (``unreadable``,
        or the label -1 a labelled domain gives such an item)."""
        keep = np.ones(len(self), dtype=bool)
        keep[list(self.unreadable)] = False
        if self.labels is not None:
            keep &= self.labels >= 0
        return np.flatnonzero(keep)

    def _class_name(self, label: int) -> str:
        if self.classes is not None and 0 <= label < len(self.classes):
            return self.classes[label]
        return str(label)

    def undecodable(self) -> dict[int, str]:
        """Items whose image failed to decode when read in this process: index -> description.

        Filled by the dataset as images are read (an ImageFolder file that
        passed the scan but is truncated, a lazily opened PIL image); the
        readers of ``diagnose`` leave these items out.
        """
        return dict(getattr(self.dataset, "undecodable", None) or {})

    def summary(self) -> dict:
        """Plain-JSON facts: name, description, n, classes, class_counts, channels, sizes, warnings.

        ``warnings`` ends with a line for the images that failed to decode when
        read, if any did.
        """
        counts = None
        if self.labels is not None:
            k = max(len(self.classes or []), int(self.labels.max()) + 1 if len(self.labels) else 0)
            counts = [int(c) for c in np.bincount(self.labels[self.labels >= 0], minlength=k)]
        return {
            "name": self.name,
            "description": self.description,
            "n": len(self),
            "classes": list(self.classes) if self.classes is not None else None,
            "class_counts": counts,
            "channels": int(self.channels),
            "native_size": list(self.native_size) if self.native_size else None,
            "size_range": [list(self.size_range[0]), list(self.size_range[1])],
            "warnings": [*self.warnings, *undecodable_note(self.undecodable())],
        }


def undecodable_note(items: dict[int, str] | list[str], k: int = 3) -> list[str]:
    """The warning line for images that failed to decode (none when there are none)."""
    found = list(items.values()) if isinstance(items, dict) else list(items)
    if not found:
        return []
    shown = ", ".join(found[:k]) + (", ..." if len(found) > k else "")
    return [f"skipped {len(found)} image(s) that could not be decoded: {shown}"]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(not np.isfinite(f) or f < 0 for f in fr) or fr[0] <= 0:
        raise ValueError(
            "The 'fractions' parameter of Domain.splits must be three non-negative numbers "
            f"(train, val, test) with train > 0. Got {tuple(fractions)!r} instead."
        )
    if abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(
            f"The 'fractions' parameter of Domain.splits must sum to 1. Got {fr!r} "
            f"(sum {sum(fr):.4g}) instead."
        )
    return fr  # type: ignore[return-value]


def load_domain(spec: str) -> Domain:
    """Load a domain from ``demo:NAME``, an ImageFolder directory or ``module.path:function``.

    ``module.path:function`` must return a map-style ``torch.utils.data.Dataset``
    whose items are ``(x, y)`` or ``x`` alone, ``x`` being a C x H x W (or
    H x W) tensor or a PIL image. Class names come from a ``classes``
    attribute when present; labels from a ``targets`` attribute when present,
    otherwise by iterating once over the dataset (which decodes every item).

    Raises ``ValueError`` with one line naming the input and the fix.
    """
    spec = str(spec)
    if spec.startswith("demo:"):
        return _load_demo(spec)
    if Path(spec).exists() or not is_callable_spec(spec):
        return _load_image_folder(spec)
    return _load_callable(spec)


def _load_demo(spec: str) -> Domain:
    if spec not in DEMO_DOMAINS:
        raise ValueError(f"unknown demo domain {spec!r}: choose one of {', '.join(DEMO_DOMAINS)}.")
    images, labels, classes, _ = demo_arrays()[spec]
    n = len(labels)
    return Domain(
        name=spec,
        dataset=TensorImageDataset(images, labels, classes),
        labels=labels,
        classes=list(classes),
        channels=1,
        native_size=(32, 32),
        size_range=((32, 32), (32, 32)),
        description=f"{DEMO_DOMAINS[spec]}; {n} images, 8x8 upsampled to 32x32, 1 channel",
    )


def _load_image_folder(spec: str) -> Domain:
    scan = scan_image_folder(spec)
    channels = 1 if scan.all_gray else 3
    native, size_range = size_facts(scan.sizes)
    size_text = (
        f"{native[0]}x{native[1]}" if native else f"sizes {size_range[0]} to {size_range[1]}"
    )
    return Domain(
        name=spec,
        dataset=ImageFolderDataset(scan, channels),
        labels=scan.labels,
        classes=list(scan.classes),
        channels=channels,
        native_size=native,
        size_range=size_range,
        description=(
            f"ImageFolder {spec}: {len(scan.paths)} images in {len(scan.classes)} classes, "
            f"{size_text}, {channels} channel(s)"
        ),
        warnings=list(scan.warnings),
    )


def _load_callable(spec: str) -> Domain:
    return Domain(**callable_domain_fields(spec))
