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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from probes._capture_data import batches_of, count_examples, resolve_device
from probes._capture_pass import CapturePass
from probes._hooks import PooledHooks
from probes._layers import discover_layers, resolve_layers
from probes._layout import MEMORY_FORMATS, SwappedWeights
from probes._pooling import (
    TOKEN_POOL_NAMES,
    check_pool,
)
from probes._size import parse_size
from probes._store import CapturedFeatures, FeatureSink
from probes._validation import check_choice, check_int

__all__ = ["CapturedFeatures", "capture", "discover_layers", "parse_size"]


def _layer_names(model: nn.Module, layers, auto: bool) -> list[str]:
    """The names ``layers`` asks for: discovered (``"auto"``), or the ones given."""
    if auto:
        names = discover_layers(model)
        if not names:
            raise ValueError(
                f"No layers were discovered in {type(model).__name__}; pass layers=[...] with "
                "names from model.named_modules()."
            )
        return names
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(
            "The 'layers' parameter of capture must be 'auto' or a non-empty list of module "
            f"names. Got {layers!r} instead."
        )
    return names


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
    max_memory: int | str | None = None,
    store_dir: str | Path | None = None,
    skip_unreadable: bool = False,
    memory_format: str = "contiguous",
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
        keep_output: also keep the model's final output (logits) as (N, K): the
            output itself when it is a tensor, else what :func:`probes.logits_of`
            takes from it (a ``logits`` entry or attribute, or its first tensor).
        max_samples: use only the first ``max_samples`` examples in data order.
        seed: seed of the random projections.
        progress, desc: show a tqdm bar over batches, labelled ``desc``.
        max_memory: budget in bytes (an int, or a string such as ``"2GB"``,
            ``"512MiB"``) for the captured arrays, N x (sum of D, plus K with
            ``keep_output``) x 4 bytes. None (default): keep everything in
            memory. When the capture would exceed it (estimated from ``len(data)``
            and the first batch's widths; for data of unknown length, once the
            buffer crosses it), each layer is streamed batch by batch into a
            float32 ``.npy`` file and the arrays come back as read-only
            ``np.memmap`` views: memory stays O(batch + model) whatever N is, and
            the values are identical to an in-memory capture.
        store_dir: where those files go (created; must be empty; kept
            afterwards). Given without ``max_memory``, the capture always goes to
            disk. Default: a temporary directory under ``$TMPDIR``, deleted by
            ``CapturedFeatures.close()``, on garbage collection or at exit.
        skip_unreadable: for a map-style Dataset, leave out each example whose
            ``__getitem__`` raises :class:`probes.UnreadableExample` (an image
            that fails to decode) instead of failing: its index is recorded in
            ``skipped`` and the pass gets one warning. Rows then no longer
            match dataset indices one to one; ``skipped`` says which are gone.
        memory_format: ``"contiguous"`` (the default: the model's weights and
            NCHW inputs as given) or ``"channels_last"`` (4-D inputs, and the
            model's 4-D floating weights for the pass only, channels-last: often
            faster on the CPU for convolutional networks). The layouts differ
            only by float rounding.

    Returns:
        :class:`CapturedFeatures` with float32 (N, D) arrays per layer;
        ``storage`` says "memory" or "disk".

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
    check_int(batch_size, "batch_size", "capture")
    check_int(max_dim, "max_dim", "capture", allow_none=True)
    check_int(max_samples, "max_samples", "capture", allow_none=True)
    check_choice(memory_format, "memory_format", "capture", MEMORY_FORMATS)
    budget = None if max_memory is None else parse_size(max_memory, "max_memory")
    auto = isinstance(layers, str) and layers == "auto"
    names = _layer_names(model, layers, auto)
    targets = resolve_layers(model, names)
    dev = resolve_device(model, device)
    float_params = [p for p in model.parameters() if p.is_floating_point()]
    in_dtype = float_params[0].dtype if float_params else None
    batches, total = batches_of(data, int(batch_size), max_samples, bool(skip_unreadable))
    sink = FeatureSink(budget, store_dir, count_examples(data, max_samples))

    hooks = PooledHooks(targets, pool=pool, token_pool=token_pool, max_dim=max_dim, seed=seed)
    weights = SwappedWeights(model)
    run = CapturePass(
        model, hooks, sink, memory_format, dev, in_dtype, keep_output=keep_output, auto=auto,
        batch_size=batch_size,
    )  # fmt: skip
    flags = [(m, m.training) for m in model.modules()]
    bar = tqdm(total=total, desc=desc, unit="batch", disable=not progress)
    try:
        model.eval()
        weights.apply(memory_format)
        with torch.no_grad():
            for batch, left_out in batches:
                run.skipped.extend(left_out)
                if batch is not None:  # None: every example of this batch was unreadable
                    run.add(batch, max_samples)
                bar.update(1)
                if max_samples is not None and run.seen >= max_samples:
                    break
    except BaseException:
        sink.abort()
        raise
    finally:
        hooks.remove()
        weights.restore()
        for module, flag in flags:
            module.training = flag
        bar.close()
    pooling = {"pool": pool if isinstance(pool, str) else int(pool), "token_pool": token_pool}
    return run.result(desc, pooling)
