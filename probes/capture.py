"""Capture pooled activations of named layers in one forward pass over a dataset.

Forward hooks on the chosen modules pool each activation on the fly (conv maps
to channels, token sequences to one vector) and copy it to the CPU as float32,
so memory is O(N x D) per layer, never O(N x C x H x W).

Example:
    >>> import torch, torchvision
    >>> from probes import capture
    >>> model = torchvision.models.resnet18()
    >>> feats = capture(model, torch.randn(8, 3, 32, 32), progress=False)
    >>> feats.dims
    {'maxpool': 64, 'layer1': 64, 'layer2': 128, 'layer3': 256, 'layer4': 512}
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from probes._capture_data import batches_of, check_positive_int, resolve_device, split_batch
from probes._forward import call_error, free_device_memory, is_out_of_memory, oom_note
from probes._layers import discover_layers, resolve_layers
from probes._pooling import (
    TOKEN_POOL_NAMES,
    check_pool,
    first_tensor,
    pool_activation,
    projection_matrix,
)
from probes._validation import check_choice

__all__ = ["CapturedFeatures", "capture", "discover_layers"]


@dataclass
class CapturedFeatures:
    """Pooled activations of several layers for the same N examples.

    Attributes:
        features: layer name -> float32 array (N, D), in the order of ``layers``.
        layers: the captured layer names (qualified module names).
        labels: int64 (N,) class labels, -1 for unlabelled examples; None when
            the data carried no labels.
        output: float32 (N, K) final model output (logits) when captured with
            ``keep_output=True``, else None.
        projected: layer -> its dimension before random projection, for the
            layers that ``max_dim`` projected.
        pooling: how activations were pooled (``{"pool": ..., "token_pool": ...}``).
        warnings: notes about the pass, e.g. batches re-run in halves after the
            device ran out of memory (empty when nothing happened).

    Example:
        >>> feats["layer4"].shape          # (N, 512)
        >>> feats.subset([0, 2, 4]).n      # 3
    """

    features: dict[str, np.ndarray]
    layers: list[str]
    labels: np.ndarray | None = None
    output: np.ndarray | None = None
    projected: dict[str, int] = field(default_factory=dict)
    pooling: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

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

    def __getitem__(self, layer: str) -> np.ndarray:
        try:
            return self.features[layer]
        except KeyError:
            raise KeyError(
                f"Layer {layer!r} was not captured. Captured layers: {self.layers}."
            ) from None

    def subset(self, indices: Sequence[int] | np.ndarray) -> CapturedFeatures:
        """The same layers for the examples at ``indices`` (integer positions or a boolean mask)."""
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
            features={name: self.features[name][idx] for name in self.layers},
            layers=list(self.layers),
            labels=None if self.labels is None else self.labels[idx],
            output=None if self.output is None else self.output[idx],
            projected=dict(self.projected),
            pooling=dict(self.pooling),
            warnings=list(self.warnings),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (never the arrays); ``warnings`` appears only when there are any."""
        summary = {
            "layers": list(self.layers),
            "dims": self.dims,
            "n": self.n,
            "pooling": dict(self.pooling),
            "projected": {k: int(v) for k, v in self.projected.items()},
            "has_labels": self.labels is not None,
            "has_output": self.output is not None,
        }
        if self.warnings:
            summary["warnings"] = list(self.warnings)
        return summary


def capture(
    model: nn.Module,
    data: Any,
    layers: str | Sequence[str] = "auto",
    *,
    pool: str | int = "avg",
    token_pool: str = "mean",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    max_dim: int | None = None,
    keep_output: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "capture",
) -> CapturedFeatures:
    """Run ``model`` once over ``data`` and keep each layer's pooled activation per example.

    Args:
        model: any ``nn.Module``. It is put in eval mode for the pass and every
            submodule's train/eval flag is restored afterwards; hooks are always
            removed, also when the forward raises. Gradients are off (``no_grad``).
        data: a Dataset (items ``x`` or ``(x, y, ...)``), a DataLoader or any
            iterable of batches (``x`` or ``(x, y, ...)``), or a tensor / numpy
            array of inputs. Integer ``y`` are kept as labels (-1 = unlabelled);
            non-integer ``y`` (regression targets) are ignored.
        layers: ``"auto"`` (:func:`discover_layers`; modules the forward pass does
            not run, such as auxiliary heads, are dropped with a warning) or
            qualified module names from ``model.named_modules()``.
        pool: for (N, C, H, W) maps: ``"avg"`` (global average, D = C), ``"max"``,
            ``"avgmax"`` (both, D = 2C) or an int k (adaptive average pool to
            k x k, flattened, D = C k²).
        token_pool: for (N, T, D) sequences: ``"mean"`` over tokens or ``"cls"`` (token 0).
            (N, D) outputs are kept, other ranks flattened; for tuple outputs the
            first tensor is used.
        batch_size: batch size for Datasets and tensors (a DataLoader keeps its own).
        device: where inputs go; None means the device of the model's first
            parameter. The model itself is never moved. Floating inputs are cast
            to the dtype of the model's first floating parameter.
        max_dim: if set, a layer whose pooled dimension D exceeds it is multiplied
            by a fixed Gaussian (D, max_dim) matrix (seeded by ``seed`` and the
            layer name) batch by batch, keeping memory O(N x max_dim).
        keep_output: also keep the model's final output (logits) as (N, K).
        max_samples: use only the first ``max_samples`` examples in data order.
        seed: seed of the random projections.
        progress, desc: show a tqdm bar over batches, labelled ``desc``.

    Returns:
        :class:`CapturedFeatures` with float32 (N, D) arrays per layer.

    A batch that runs out of device memory (``torch.cuda.OutOfMemoryError`` or a
    RuntimeError saying "out of memory") is re-run in halves, recursively down
    to single examples, after freeing the CUDA cache; this is recorded in
    ``warnings`` of the result and reported with ``warnings.warn``.

    Raises:
        ValueError: unknown layer names (with the available names and close
            matches), a module called more or less than once per forward pass,
            empty data, or invalid parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter must be a torch.nn.Module. Got {type(model).__name__} instead."
        )
    check_pool(pool)
    check_choice(token_pool, "token_pool", "capture", TOKEN_POOL_NAMES)
    check_positive_int(batch_size, "batch_size")
    check_positive_int(max_dim, "max_dim", allow_none=True)
    check_positive_int(max_samples, "max_samples", allow_none=True)
    auto = isinstance(layers, str) and layers == "auto"
    if auto:
        names = discover_layers(model)
        if not names:
            raise ValueError(
                f"No layers were discovered in {type(model).__name__}; pass layers=[...] with "
                "names from model.named_modules()."
            )
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(
                "The 'layers' parameter of capture must be 'auto' or a non-empty list of module "
                f"names. Got {layers!r} instead."
            )
    targets = resolve_layers(model, names)
    dev = resolve_device(model, device)
    float_params = [p for p in model.parameters() if p.is_floating_point()]
    in_dtype = float_params[0].dtype if float_params else None
    batches, total = batches_of(data, int(batch_size), max_samples)

    stores: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    calls: dict[str, int] = dict.fromkeys(names, 0)
    matrices: dict[str, torch.Tensor] = {}
    projected: dict[str, int] = {}
    current = {"batch": 0}

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            calls[name] += 1
            if calls[name] > 1:
                return  # reported after the forward, with the full count
            pooled = pool_activation(
                out, layer=name, batch=current["batch"], pool=pool, token_pool=token_pool
            )
            dim = pooled.shape[1]
            if max_dim is not None and (dim > max_dim or name in matrices):
                if name not in matrices:
                    matrices[name] = projection_matrix(name, dim, int(max_dim), seed, pooled.device)
                    projected[name] = int(dim)
                if matrices[name].shape[0] != dim:
                    raise ValueError(
                        f"Layer {name!r} changed dimension between batches "
                        f"({matrices[name].shape[0]} then {dim}); use inputs of one size."
                    )
                pooled = pooled @ matrices[name]
            # A copy, always: a CPU tensor's .to("cpu") shares storage, and an in-place
            # op later in the forward (ReLU(inplace=True)) would overwrite it.
            stores[name].append(pooled.detach().to("cpu", dtype=torch.float32, copy=True))

        return hook

    def forward_once(x: torch.Tensor, depth: int) -> torch.Tensor | None:
        """One forward pass; checks every hooked layer ran once; the CPU output if kept."""
        current["batch"] = x.shape[0]
        calls.update(dict.fromkeys(calls, 0))
        out = model(x)
        for name, count in list(calls.items()):
            if count == 0 and auto and seen == 0:
                # A discovered module the forward never runs (an auxiliary head).
                warnings.warn(
                    f"Layer {name!r} is not run by {type(model).__name__}'s forward "
                    "pass in eval mode; it is left out.",
                    stacklevel=4 + depth,
                )
                handles.pop(name).remove()
                del calls[name], stores[name]
                names.remove(name)
            elif count != 1:
                raise call_error(name, count)
        if not keep_output:
            return None
        o = first_tensor(out)
        if o is None:
            raise TypeError(
                f"keep_output=True but the model returned {type(out).__name__}, "
                "which holds no tensor."
            )
        return o.detach().reshape(o.shape[0], -1).to("cpu", torch.float32, copy=True)

    def run_split(x: torch.Tensor, depth: int = 0) -> list[tuple[int, torch.Tensor | None]]:
        """Forward ``x``; on out-of-memory, drop its partial hook outputs and re-run halves."""
        marks = {name: len(store) for name, store in stores.items()}
        try:
            return [(x.shape[0], forward_once(x, depth))]
        except Exception as exc:
            if not is_out_of_memory(exc) or x.shape[0] == 1:
                raise
        # Outside the except block, so the traceback no longer pins the failed
        # forward's tensors and the cache can actually be freed.
        for name, mark in marks.items():
            del stores[name][mark:]
        free_device_memory()
        half = (x.shape[0] + 1) // 2
        return run_split(x[:half], depth + 1) + run_split(x[half:], depth + 1)

    flags = [(m, m.training) for m in model.modules()]
    oom = {"batches": 0, "of": 0, "smallest": int(batch_size), "fits": int(batch_size)}
    handles: dict[str, Any] = {}
    labels: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    has_labels: bool | None = None
    seen = 0
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress)
    try:
        model.eval()
        for name, module in targets:
            handles[name] = module.register_forward_hook(make_hook(name))
        with torch.no_grad():
            for batch in batches:
                x, y = split_batch(batch)
                if max_samples is not None and seen + x.shape[0] > max_samples:
                    x = x[: max_samples - seen]
                    y = None if y is None else y[: max_samples - seen]
                if x.shape[0] == 0:
                    continue
                if has_labels is None:
                    has_labels = y is not None
                elif has_labels != (y is not None):
                    raise ValueError(
                        "Some batches of 'data' carry integer labels and others do not; "
                        "give every example a label (-1 for unlabelled) or none."
                    )
                if x.is_floating_point() and in_dtype is not None:
                    x = x.to(dev, dtype=in_dtype)
                else:
                    x = x.to(dev)
                pieces = run_split(x)
                oom["of"] += 1
                if len(pieces) > 1:
                    oom["batches"] += 1
                    sizes = [n for n, _ in pieces]
                    oom["smallest"] = min(oom["smallest"], *sizes)
                    oom["fits"] = min(oom["fits"], max(sizes))
                if keep_output:
                    outputs.extend(o for _, o in pieces)
                if y is not None:
                    labels.append(y)
                seen += x.shape[0]
                bar.update(1)
                if max_samples is not None and seen >= max_samples:
                    break
    finally:
        for handle in handles.values():
            handle.remove()
        for module, flag in flags:
            module.training = flag
        bar.close()

    if seen == 0:
        raise ValueError("The 'data' parameter of capture holds no examples.")
    if not names:
        raise ValueError("None of the discovered layers is run by the forward pass.")
    notes = []
    if oom["batches"]:
        notes.append(oom_note(oom["batches"], oom["of"], oom["smallest"], oom["fits"], batch_size))
        warnings.warn(notes[-1], RuntimeWarning, stacklevel=2)
    features = {}
    for name in names:
        widths = {t.shape[1] for t in stores[name]}
        if len(widths) > 1:
            raise ValueError(
                f"Layer {name!r} gave different dimensions across batches ({sorted(widths)}); "
                "use inputs of one size or an adaptive pool."
            )
        features[name] = torch.cat(stores[name]).numpy()
    return CapturedFeatures(
        features=features,
        layers=list(names),
        labels=torch.cat(labels).numpy() if has_labels else None,
        output=torch.cat(outputs).numpy() if keep_output else None,
        projected=projected,
        pooling={"pool": pool if isinstance(pool, str) else int(pool), "token_pool": token_pool},
        warnings=notes,
    )
