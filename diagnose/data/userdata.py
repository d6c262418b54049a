"""Datasets from a ``module.path:function`` spec, adapted to ``(image tensor, label)`` items."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from diagnose.core import call_spec
from diagnose.data.imagefolder import GRAY_MODES, UndecodableImage, pil_to_tensor

__all__ = [
    "callable_domain_fields",
    "size_facts",
]

_SIZE_SAMPLE = 64  # items decoded to infer sizes when labels come from `targets`
# More than this share of the items read failing is a broken data source (or a bug in
# its __getitem__), not a hiccup: the probes, the gap and the race would then describe a
# minority of the data the user gave. The run stops, saying how many failed and the
# first error, which is also where a bug in the user's code shows.
MAX_FAILED_SHARE = 0.5


def _read_item(ds: Any, index: int, where: str) -> tuple[Any, int | str | None]:
    """``ds[index]`` as (image, label). Any error the user's ``__getitem__`` raises (a
    network share hiccup, a missing file) becomes an :class:`UndecodableImage` naming the
    item, which the readers skip and count."""
    try:
        item = ds[int(index)]  # a plain int: some datasets (Hugging Face) refuse numpy's
    except Exception as exc:  # the user's code: any type
        why = f"{type(exc).__name__}: {exc}"
        raise UndecodableImage(
            f"{where} could not be read ({why})", index=int(index), item=f"{where} ({why})"
        ) from exc
    return _split_item(item, where)


def size_facts(
    sizes: list[tuple[int, int]],
) -> tuple[tuple[int, int] | None, tuple[tuple[int, int], tuple[int, int]]]:
    """``native_size`` (the common (H, W) or None) and ``size_range`` (min and max (H, W))."""
    unique = set(sizes)
    native = next(iter(unique)) if len(unique) == 1 else None
    hs = [s[0] for s in sizes]
    ws = [s[1] for s in sizes]
    return native, ((min(hs), min(ws)), (max(hs), max(ws)))


def _facts(x: torch.Tensor) -> tuple[int, int, int, float, float]:
    """(channels, height, width, min, max) of a C x H x W image."""
    return int(x.shape[0]), int(x.shape[1]), int(x.shape[2]), float(x.min()), float(x.max())


def _as_image(x: Any, where: str, index: int | None = None) -> torch.Tensor:
    """A dataset item's image as a float32 C x H x W tensor (uint8 scaled to [0, 1]).

    A PIL image that fails to decode (opened lazily, then truncated) raises
    :class:`UndecodableImage`.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(x, Image.Image):
        try:
            x.load()
            return pil_to_tensor(x, 1 if x.mode in GRAY_MODES else 3)
        except Exception as exc:  # PIL raises many types for bad data
            why = f"{type(exc).__name__}: {exc}"
            raise UndecodableImage(
                f"{where}: its image could not be decoded ({why})",
                index=index,
                item=f"{where} ({why})",
            ) from exc
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"{where}: expected the image as a tensor (C x H x W) or a PIL image, "
            f"got {type(x).__name__}."
        )
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim == 3 and x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(2, 0, 1)  # H x W x C (numpy, OpenCV, albumentations): channels first
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        raise ValueError(
            f"{where}: expected an image of shape C x H x W (or H x W x C) with C in 1, 3, 4, "
            f"got shape {tuple(x.shape)}."
        )
    if x.shape[0] == 4:  # RGBA: alpha carries no appearance for a classifier
        x = x[:3]
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    return x.to(torch.float32)


class _ItemAdapter(Dataset):
    """Wraps a user dataset so items are ``(float32 C x H x W tensor, int label or -1)``."""

    def __init__(
        self,
        base: Dataset,
        spec: str,
        labels: np.ndarray | None,
        class_index: dict[str, int] | None = None,
    ):
        self.base = base
        self.spec = spec
        self.targets = labels
        self.classes = getattr(base, "classes", None)
        self.class_index = class_index  # string labels -> class indices (sorted names)
        self.undecodable: dict[int, str] = {}  # index -> description, as ImageFolderDataset

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        where = f"dataset {self.spec!r} item {index}"
        try:
            x, y = _read_item(self.base, index, where)
            image = _as_image(x, where, int(index))
        except UndecodableImage as exc:
            self.undecodable[int(index)] = exc.describe()
            raise
        if isinstance(y, str):
            y = _label_index(y, self.class_index, where)
        return image, -1 if y is None else y


def _label_index(y: str, class_index: dict[str, int] | None, where: str) -> int:
    if class_index is None or y not in class_index:
        raise ValueError(
            f"{where}: the label {y!r} is not one of the dataset's classes "
            f"{sorted(class_index or {})[:10]}."
        )
    return class_index[y]


# Keys of a dict item (Hugging Face ``datasets`` rows, many user Datasets), in the order
# they are looked for.
IMAGE_KEYS = ("image", "img", "pixel_values", "images", "input", "inputs", "x")
LABEL_KEYS = ("label", "labels", "target", "targets", "fine_label", "class", "y")


def _split_item(item: Any, where: str) -> tuple[Any, int | str | None]:
    """``(image, label or None)`` of one item: ``(image, label, *extras)``, ``(image,)``, a
    dict with an image key (:data:`IMAGE_KEYS`) and maybe a label key (:data:`LABEL_KEYS`),
    or a bare image."""
    if isinstance(item, Mapping):
        image_key, label_key = _keys(item)
        if image_key is None:
            raise ValueError(
                f"{where}: a dict item needs its image under one of {', '.join(IMAGE_KEYS)}; "
                f"its keys are {', '.join(map(str, list(item)[:10]))}."
            )
        y = None if label_key is None else _label_value(item[label_key], where)
        return item[image_key], y
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], None
        # (image, label, path) and (image, label, index) are common: extras are ignored.
        return item[0], _label_value(item[1], where)
    return item, None


def _first_key(keys: tuple[str, ...], mapping: Mapping) -> str | None:
    """The first of ``keys`` that ``mapping`` holds (None: none)."""
    return next((k for k in keys if k in mapping), None)


def _keys(item: Mapping) -> tuple[str | None, str | None]:
    """The image key and the label key (None: none) of a dict item."""
    return _first_key(IMAGE_KEYS, item), _first_key(LABEL_KEYS, item)


def _label_value(y: Any, where: str) -> int | str:
    """A label as an int class index or a class name (str)."""
    if isinstance(y, torch.Tensor):
        if y.numel() != 1:
            raise ValueError(f"{where}: the label must be one integer, got shape {tuple(y.shape)}.")
        y = y.item()
    if isinstance(y, (np.integer, np.floating)):
        y = y.item()
    if isinstance(y, float) and y.is_integer():
        y = int(y)
    if isinstance(y, str):  # a class name: mapped to its index in the sorted names
        return y
    if not isinstance(y, int) or isinstance(y, bool):
        raise ValueError(
            f"{where}: the label must be an integer class index or a class name, got {y!r}."
        )
    return y


def _item_form(ds: Any, n: int) -> str | None:
    """A note on how the first readable item was read, when it is not ``(image, label)``."""
    for i in range(min(n, 3)):
        try:
            item = ds[i]
        except Exception:  # the user's code; the readers report it
            continue
        if isinstance(item, Mapping):
            image_key, label_key = _keys(item)
            label = f"{label_key!r} as the label" if label_key else "no label key (unlabelled)"
            return f"items are dicts: {image_key!r} is read as the image and {label}"
        if isinstance(item, (tuple, list)) and len(item) > 2:
            return (
                f"items have {len(item)} values: the first two are read as (image, label) "
                "and the rest ignored"
            )
        return None
    return None


def _read_facts(x: Any, where: str, bad: list[str]) -> tuple | None:
    """``_facts`` of one item's image, or None (noted in ``bad``) when it fails to decode."""
    try:
        return _facts(_as_image(x, where))
    except UndecodableImage as exc:
        bad.append(exc.describe())
        return None


_FAILED = object()  # the label of an item whose __getitem__ raised


def _probe_item(ds, i: int, where: str, bad: list[str], failed: dict[int, str]) -> tuple:
    """``(facts or None, label)`` of item ``i``; a read error is noted in ``failed`` (label
    :data:`_FAILED`), an undecodable image in ``bad``."""
    try:
        x, y = _read_item(ds, i, where)
    except UndecodableImage as exc:
        failed[i] = exc.describe()
        return None, _FAILED
    return _read_facts(x, where, bad), y


def _check_failed(spec: str, failed: dict[int, str], n_read: int, notes: list[str]) -> None:
    if not failed:
        return
    first = next(iter(failed.values()))
    if len(failed) > MAX_FAILED_SHARE * n_read:
        raise ValueError(
            f"dataset spec {spec!r}: {len(failed)} of the {n_read} items read raised an error, "
            f"too many to measure anything (the first: {first}); fix the dataset or its "
            "source."
        )
    notes.append(
        f"{len(failed)} of {n_read} items read raised an error and are skipped (the first: {first})"
    )


def _labels_of(spec: str, ys: list) -> tuple[np.ndarray | None, list[str] | None, dict | None]:
    """``(labels, class names, name -> index)``: class names (strings) map to their index in
    the sorted names; items that could not be read get -1 (unlabelled)."""
    known = [y for y in ys if y is not _FAILED]
    if all(y is None for y in known):
        return None, None, None
    if any(y is None for y in known):
        raise ValueError(f"dataset spec {spec!r}: some items have a label and some do not.")
    strings = [isinstance(y, str) for y in known]
    if any(strings) and not all(strings):
        raise ValueError(
            f"dataset spec {spec!r}: some labels are class names and some are indices; "
            "use one kind."
        )
    names = sorted(set(known)) if all(strings) else None
    index = {c: i for i, c in enumerate(names)} if names is not None else None
    values = [-1 if y is _FAILED else (index[y] if index else y) for y in ys]
    try:
        labels = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"dataset spec {spec!r}: its labels are not class indices ({exc})."
        ) from exc
    read = np.asarray([y is not _FAILED for y in ys])
    if read.any() and labels[read].min() < 0:
        raise ValueError(
            f"dataset spec {spec!r}: labels must be class indices >= 0, found "
            f"{int(labels[read].min())}."
        )
    return labels, names, index


def _dataset(spec: str) -> tuple[Dataset, int]:
    """The map-style Dataset a spec returns, and its length (at least 1)."""
    ds = call_spec(spec, "a torch Dataset", "dataset spec")
    # Any map-style dataset (a Hugging Face ``datasets.Dataset``, a class with __getitem__
    # and __len__) reads like a torch one; a builtin container is more likely a mistake.
    mapped = hasattr(ds, "__getitem__") and hasattr(ds, "__len__")
    if not isinstance(ds, Dataset) and (not mapped or isinstance(ds, (list, tuple, dict, str))):
        raise ValueError(
            f"dataset spec {spec!r} returned a {type(ds).__name__}, not a "
            "torch.utils.data.Dataset: return a Dataset whose items are (image, label)."
        )
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError(
            f"dataset spec {spec!r} returned a Dataset without __len__ (an IterableDataset?): "
            "return a map-style Dataset."
        ) from exc
    if n == 0:
        raise ValueError(f"dataset spec {spec!r} returned an empty Dataset.")
    return ds, n


def _class_names(spec: str, ds, names, labels) -> list[str] | None:
    """The class names: from string labels, the Dataset's ``classes``, or the label range."""
    classes = names if names is not None else getattr(ds, "classes", None)
    if classes is None:
        classes = _feature_names(ds)
    if classes is not None:
        classes = [str(c) for c in classes]
    elif labels is not None:
        classes = [str(i) for i in range(int(labels.max()) + 1)]
    if labels is not None and classes is not None and int(labels.max()) >= len(classes):
        raise ValueError(
            f"dataset spec {spec!r}: label {int(labels.max())} has no entry in its "
            f"{len(classes)} classes."
        )
    return classes


def _label_feature(ds) -> tuple[str | None, Any]:
    """``(key, feature)`` of a Hugging Face dataset's label column (``ds.features``);
    ``(None, None)`` for any other dataset."""
    features = getattr(ds, "features", None)
    key = _first_key(LABEL_KEYS, features) if isinstance(features, Mapping) else None
    return (key, features[key]) if key is not None else (None, None)


def _feature_names(ds) -> list[str] | None:
    """Class names of a Hugging Face dataset: its label feature's ``ClassLabel.names``."""
    names = getattr(_label_feature(ds)[1], "names", None)
    return list(names) if isinstance(names, (list, tuple)) and names else None


def _label_column(ds, n: int) -> list | None:
    """A Hugging Face dataset's label column (``ds["label"]``), read without decoding a
    single image; None for any other dataset."""
    key = _label_feature(ds)[0]
    if key is None:
        return None
    try:
        column = ds[key]
    except Exception:  # not a column store after all: read the items
        return None
    return list(column) if isinstance(column, (list, tuple)) and len(column) == n else None


def callable_domain_fields(spec: str) -> dict[str, Any]:
    """The fields of a ``Domain`` for a ``module.path:function`` spec (see ``load_domain``)."""
    ds, n = _dataset(spec)
    form = _item_form(ds, n)
    notes: list[str] = [form] if form else []
    bad: list[str] = []
    failed: dict[int, str] = {}  # item -> what its read raised
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = _label_column(ds, n)
    if targets is not None:
        ys = targets.tolist() if isinstance(targets, torch.Tensor) else list(targets)
        if len(ys) != n or any(isinstance(y, (list, tuple)) for y in ys):
            raise ValueError(
                f"dataset spec {spec!r}: its 'targets' has {len(ys)} entries (or nested ones), "
                f"expected one label per item ({n})."
            )
        probe = np.unique(np.linspace(0, n - 1, min(n, _SIZE_SAMPLE)).round().astype(int))
        read = [_probe_item(ds, int(i), f"{spec} item {i}", bad, failed) for i in probe]
        facts = [f for f, _ in read if f is not None]
        if len(probe) < n:
            notes.append(f"sizes and channels inferred from {len(facts)} of {n} items")
    else:
        # No `targets`: read every item once, the only way to know the labels; keep
        # only its label and a few numbers, never the decoded images themselves.
        read = [_probe_item(ds, i, f"dataset {spec!r} item {i}", bad, failed) for i in range(n)]
        facts = [f for f, _ in read if f is not None]
        ys = [y for _, y in read]
    _check_failed(spec, failed, len(read), notes)
    labels, names, class_index = _labels_of(spec, ys)
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        notes.append(f"{len(bad)} item(s) whose image could not be decoded: {shown}")
    if not facts:
        raise ValueError(
            f"dataset spec {spec!r}: none of the items read could be decoded ({(bad + list(failed.values()))[0]})."
        )
    channels = 3 if {f[0] for f in facts} - {1} else 1
    lo, hi = min(f[3] for f in facts), max(f[4] for f in facts)
    if lo < 0.0 or hi > 1.0:
        notes.append(
            f"pixel values span [{lo:.3g}, {hi:.3g}], not [0, 1]: return unnormalised images "
            "so the model's own normalisation can be applied"
        )
    native, size_range = size_facts([(f[1], f[2]) for f in facts])
    classes = _class_names(spec, ds, names, labels)
    label_text = f"{len(classes)} classes" if classes is not None else "unlabelled"
    return dict(
        name=spec,
        dataset=_ItemAdapter(ds, spec, labels, class_index),
        labels=labels,
        classes=classes,
        channels=channels,
        native_size=native,
        size_range=size_range,
        description=f"dataset from {spec}: {n} images, {label_text}, {channels} channel(s)",
        warnings=notes,
        unreadable=frozenset(failed),
    )
