"""Where captured features live: in memory, or in float32 ``.npy`` files on disk.

:func:`probes.capture` hands each batch's pooled features to a
:class:`FeatureSink`. Without a memory budget they stay in memory (lists of
tensors concatenated at the end, as always). With ``max_memory`` the sink
estimates the size of the whole capture, N x sum(D) x 4 bytes, as soon as the
first batch shows the layer widths (N from ``len(data)`` when known); above
the budget, or once the in-memory buffer crosses it when N is unknown, every
layer is streamed into its own ``.npy`` file (:class:`FeatureStore`): rows
are appended batch by batch and the header is written last, so memory stays
O(batch) whatever N is, and the files are ordinary ``.npy`` arrays that
``np.load(path, mmap_mode="r")`` opens. The capture's arrays are then
read-only ``np.memmap`` views of those files.

Files go under ``store_dir`` (kept: the caller owns them) or, by default, a
fresh ``tempfile.mkdtemp`` directory (under ``$TMPDIR``) that is deleted when
the :class:`CapturedFeatures` is closed, garbage-collected, or the
interpreter exits.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "OUTPUT_KEY",
    "CapturedFeatures",
    "FeatureSink",
    "FeatureStore",
]

OUTPUT_KEY = "__output__"  # the model's output travels with the layers under this key
MANIFEST = "manifest.json"


def width_error(name: str, widths: Sequence[int]) -> ValueError:
    return ValueError(
        f"Layer {name!r} gave different dimensions across batches ({sorted(set(widths))}); "
        "use inputs of one size or an adaptive pool."
    )


def _file_name(index: int, key: str) -> str:
    if key == OUTPUT_KEY:
        return "output.npy"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80]
    return f"{index:03d}-{slug}.npy"


class FeatureStore:
    """Per-key float32 (N, D) ``.npy`` files written one block of rows at a time.

    Rows are appended to each file after a header reserved for shape (0, D);
    :meth:`finish` rewrites the header with the final row count (numpy pads
    headers so that the row count can grow in place) and opens every file as a
    read-only ``np.memmap``. A ``manifest.json`` lists the files and shapes.
    """

    def __init__(self, directory: str | Path | None) -> None:
        if directory is None:
            self.path = Path(tempfile.mkdtemp(prefix="probes-capture-"))
            self.owned = True
        else:
            self.path = Path(directory)
            if self.path.exists() and not self.path.is_dir():
                raise ValueError(
                    f"The 'store_dir' parameter of capture must be a directory. "
                    f"Got {str(self.path)!r}, which is a file."
                )
            self.path.mkdir(parents=True, exist_ok=True)
            if any(self.path.iterdir()):
                raise ValueError(
                    f"The 'store_dir' parameter of capture must be an empty or new directory; "
                    f"{str(self.path)!r} already holds files. Pick another directory or empty it."
                )
            self.owned = False
        self._files: dict[str, Path] = {}
        self._handles: dict[str, Any] = {}
        self._dims: dict[str, int] = {}
        self._dtype: dict[str, np.dtype] = {}
        self.rows: dict[str, int] = {}
        # Owned directories go when the store does (or at exit), not when the arrays do:
        # on POSIX a mapped file stays readable after it is unlinked.
        self._finalizer = (
            weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)
            if self.owned
            else None
        )

    def append(self, key: str, block: np.ndarray) -> None:
        """Append ``block`` (n, D) to ``key``'s file, creating the file on first use."""
        block = np.ascontiguousarray(block, dtype=np.float32)
        if key not in self._handles:
            self._files[key] = self.path / _file_name(len(self._files), key)
            handle = open(self._files[key], "wb")  # noqa: SIM115 - closed in finish/close
            self._handles[key] = handle
            self._dims[key] = int(block.shape[1])
            self._dtype[key] = block.dtype
            self.rows[key] = 0
            self._write_header(handle, key)
        elif block.shape[1] != self._dims[key]:
            raise width_error(key, [self._dims[key], int(block.shape[1])])
        self._handles[key].write(memoryview(block).cast("B"))
        self.rows[key] += int(block.shape[0])

    def _write_header(self, handle: Any, key: str) -> int:
        header = {
            "descr": np.lib.format.dtype_to_descr(self._dtype[key]),
            "fortran_order": False,
            "shape": (self.rows[key], self._dims[key]),
        }
        np.lib.format.write_array_header_1_0(handle, header)
        return handle.tell()

    def finish(self) -> dict[str, np.memmap]:
        """Close every file, with its final shape, and open it read-only as a memmap."""
        arrays = {}
        for key, handle in list(self._handles.items()):
            end = handle.tell()
            handle.seek(0)
            data_start = self._write_header(handle, key)
            handle.close()
            del self._handles[key]
            expected = data_start + self.rows[key] * self._dims[key] * self._dtype[key].itemsize
            if expected != end:  # the header grew: cannot happen below 10**21 rows
                raise RuntimeError(f"the feature file of {key!r} has an inconsistent header")
            arrays[key] = np.load(self._files[key], mmap_mode="r")
        manifest = {
            "format": "probes.capture feature store",
            "version": 1,
            "arrays": {
                key: {
                    "file": self._files[key].name,
                    "shape": [self.rows[key], self._dims[key]],
                    "dtype": str(self._dtype[key]),
                }
                for key in arrays
            },
        }
        (self.path / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return arrays

    def close(self) -> None:
        """Close open files; delete the directory if this store created it."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self._finalizer is not None:
            self._finalizer()


class FeatureSink:
    """Collects capture's per-batch features, in memory or (over budget) on disk.

    ``max_memory`` is the budget in bytes of the captured arrays (features and
    output), not of the model or the batch; ``n_rows`` the number of examples
    when known. With ``store_dir`` and no budget everything goes to disk.
    """

    def __init__(
        self, max_memory: int | None, store_dir: str | Path | None, n_rows: int | None
    ) -> None:
        self.max_memory = max_memory
        self.store_dir = store_dir
        self.n_rows = n_rows
        self.memory: dict[str, list[torch.Tensor]] = {}
        self.store: FeatureStore | None = None
        self.bytes = 0
        self.rows = 0

    def _over_budget(self) -> bool:
        if self.max_memory is None:
            return self.store_dir is not None
        if self.bytes > self.max_memory:
            return True
        if self.n_rows is None or self.rows == 0:
            return False
        return self.n_rows * (self.bytes / self.rows) > self.max_memory

    def add(self, pieces: dict[str, list[torch.Tensor]]) -> None:
        """Take one batch: key -> the tensors the batch produced (several after an OOM split)."""
        rows = sum(int(t.shape[0]) for t in next(iter(pieces.values()), []))
        if self.store is not None:
            for key, tensors in pieces.items():
                for t in tensors:
                    self.store.append(key, t.numpy())
            self.rows += rows
            return
        for key, tensors in pieces.items():
            self.memory.setdefault(key, []).extend(tensors)
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        self.rows += rows
        if self._over_budget():
            self._spill()

    def _spill(self) -> None:
        """Move everything buffered so far to disk; later batches go straight there."""
        self.store = FeatureStore(self.store_dir)
        for key, tensors in self.memory.items():
            while tensors:  # pop as we go, so the buffer shrinks while the files grow
                self.store.append(key, tensors.pop(0).numpy())
        self.memory.clear()

    def finish(self, keys: Sequence[str]) -> tuple[dict[str, np.ndarray], FeatureStore | None]:
        """The arrays of ``keys`` (memmaps when on disk) and the store, if any."""
        if self.store is not None:
            arrays = self.store.finish()
            return {k: arrays[k] for k in keys}, self.store
        arrays = {}
        for key in keys:
            tensors = self.memory.pop(key, [])
            widths = {int(t.shape[1]) for t in tensors}
            if len(widths) > 1:
                raise width_error(key, list(widths))
            arrays[key] = torch.cat(tensors).numpy()
        return arrays, None

    def abort(self) -> None:
        """Drop what was collected (capture failed): close and delete an owned store."""
        self.memory.clear()
        if self.store is not None:
            self.store.close()


@dataclass
class CapturedFeatures:
    """Pooled activations of several layers for the same N examples.

    Attributes:
        features: layer name -> float32 array (N, D), in the order of ``layers``;
            read-only ``np.memmap`` views of ``.npy`` files when ``storage`` is
            ``"disk"``.
        layers: the captured layer names (qualified module names).
        labels: int64 (N,) class labels, -1 for unlabelled examples; None when
            the data carried no labels. Always in memory.
        output: float32 (N, K) final model output (logits) when captured with
            ``keep_output=True``, else None (a memmap too on disk).
        projected: layer -> its dimension before random projection, for the
            layers that ``max_dim`` projected.
        pooling: how activations were pooled (``{"pool": ..., "token_pool": ...}``).
        warnings: notes about the pass, e.g. batches re-run in halves after the
            device ran out of memory, or examples left out as unreadable (empty
            when nothing happened).
        storage: ``"memory"`` or ``"disk"``.
        store_dir: the directory of the ``.npy`` files when on disk, else None.
            A temporary one is deleted by :meth:`close` (or when this object is
            garbage-collected); one given as ``store_dir`` is kept.
        skipped: sorted indices (in data order) of the examples left out because
            they could not be read (``capture(..., skip_unreadable=True)``); the
            rows are the other examples, in order.
        memory_format: the layout the pass ran in (``"contiguous"`` or
            ``"channels_last"``); None when built by hand.

    Example:
        >>> feats["layer4"].shape          # (N, 512)
        >>> feats.subset([0, 2, 4]).n      # 3 (subsets are always in memory)
    """

    features: dict[str, np.ndarray]
    layers: list[str]
    labels: np.ndarray | None = None
    output: np.ndarray | None = None
    projected: dict[str, int] = field(default_factory=dict)
    pooling: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    storage: str = "memory"
    store_dir: str | None = None
    skipped: list[int] = field(default_factory=list)
    memory_format: str | None = None
    _store: FeatureStore | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if list(self.features) != list(self.layers):
            raise ValueError(
                f"'features' keys {list(self.features)} must equal 'layers' {list(self.layers)}."
            )
        rows = {name: arr.shape[0] for name, arr in self.features.items()}
        if self.labels is not None:
            rows["labels"] = self.labels.shape[0]
        if self.output is not None:
            rows["output"] = self.output.shape[0]
        if len(set(rows.values())) > 1:
            raise ValueError(f"Captured arrays disagree on the number of examples: {rows}.")

    @property
    def n(self) -> int:
        """Number of examples (rows)."""
        if self.features:
            return int(next(iter(self.features.values())).shape[0])
        return 0 if self.labels is None else int(self.labels.shape[0])

    @property
    def dims(self) -> dict[str, int]:
        """Feature dimension D of each layer, in layer order."""
        return {name: int(self.features[name].shape[1]) for name in self.layers}

    @property
    def nbytes(self) -> int:
        """Bytes of the feature and output arrays (on disk or in memory)."""
        arrays = [*self.features.values(), *([] if self.output is None else [self.output])]
        return int(sum(a.nbytes for a in arrays))

    def __getitem__(self, layer: str) -> np.ndarray:
        try:
            return self.features[layer]
        except KeyError:
            raise KeyError(
                f"Layer {layer!r} was not captured. Captured layers: {self.layers}."
            ) from None

    def subset(self, indices: Sequence[int] | np.ndarray) -> CapturedFeatures:
        """The same layers for the examples at ``indices`` (integer positions or a boolean mask).

        The result is always in memory (a copy of the selected rows).
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (self.n,):
                raise ValueError(
                    f"A boolean 'indices' mask must have shape ({self.n},). Got {idx.shape} instead."
                )
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(
                f"The 'indices' parameter must hold integer positions. Got dtype {idx.dtype} instead."
            )
        return CapturedFeatures(
            features={name: np.asarray(self.features[name][idx]) for name in self.layers},
            layers=list(self.layers),
            labels=None if self.labels is None else self.labels[idx],
            output=None if self.output is None else np.asarray(self.output[idx]),
            projected=dict(self.projected),
            pooling=dict(self.pooling),
            warnings=list(self.warnings),
            skipped=list(self.skipped),
            memory_format=self.memory_format,
        )

    def close(self) -> None:
        """Delete a temporary on-disk store (no-op in memory or for a given ``store_dir``).

        The arrays must not be used afterwards. Also runs on garbage collection
        and at interpreter exit; ``with capture(...) as feats:`` closes on exit.
        """
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> CapturedFeatures:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (never the arrays); ``warnings`` and ``skipped`` (a count)
        appear only when there are any.

        ``storage`` is "memory" or "disk", ``bytes`` the size of the arrays and
        ``store_dir`` (disk only) where the files are.
        """
        summary = {
            "layers": list(self.layers),
            "dims": self.dims,
            "n": self.n,
            "pooling": dict(self.pooling),
            "projected": {k: int(v) for k, v in self.projected.items()},
            "has_labels": self.labels is not None,
            "has_output": self.output is not None,
            "storage": self.storage,
            "bytes": self.nbytes,
        }
        if self.store_dir is not None:
            summary["store_dir"] = self.store_dir
        if self.warnings:
            summary["warnings"] = list(self.warnings)
        if self.skipped:
            summary["skipped"] = len(self.skipped)
        return summary
