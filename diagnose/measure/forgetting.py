"""What fine-tuning made a model forget about its source domain.

Three views, each on a fixed set of held-out source images:

- **source accuracy** with the ORIGINAL classification head applied to the
  fine-tuned backbone's features (needs source labels);
- **agreement** (label-free): the fraction of source images on which that
  original head, on the current features, predicts what the pretrained model
  predicted; 1.0 means nothing the source task sees has changed;
- **CKA** (linear, Kornblith et al. 2019) per block between the pretrained and
  the current model's pooled block outputs: 1.0 = the same representation up
  to rotation and scale;

plus the **relative weight drift** per block (:mod:`diagnose.measure.drift`).

Example:
    >>> tracker = ForgettingMeter(pretrained, head="head", blocks=["block1", "block2"],
    ...                             source_x=xs, source_y=ys, device=torch.device("cpu"))
    >>> tracker.measure(finetuned)
    {'source_accuracy': 0.91, 'agreement': 0.95, 'cka': {'block1': 0.99, 'block2': 0.93}}
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

import diagnose.core as core
from diagnose.core import PARAMS, autocast_context
from diagnose.models import TORCH_FORMATS, Layout, base_model_of, choose_layout
from probes.capture import capture
from probes.similarity import cka

__all__ = [
    "ForgettingMeter",
    "TOKEN_POOLS",
    "MEASURE_SHARE",
    "forgetting_interval",
    "suggest_source_samples",
]


# How a block's token sequence becomes one vector per image (probes.capture's token_pool).
TOKEN_POOLS = PARAMS["pool"].choices
_LAYOUTS = ("auto", *TORCH_FORMATS)


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"The '{name}' parameter of ForgettingMeter must be a torch.Tensor or numpy array. "
            f"Got {type(value).__name__} instead."
        )
    return value


def _check_meter_args(modules: dict, model: str, head: str, blocks, batch_size) -> None:
    """The head and blocks name modules of the model; the batch size is a positive int."""
    if head not in modules or head == "":
        raise ValueError(f"head {head!r} is not a module of {model}.")
    missing = [b for b in blocks if b not in modules]
    if isinstance(blocks, str) or not blocks or missing:
        raise ValueError(
            f"The 'blocks' parameter of ForgettingMeter must be module names of the model. "
            f"Unknown: {missing or blocks!r}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"The 'batch_size' parameter of ForgettingMeter must be a positive int. Got {batch_size!r} instead."
        )


class ForgettingMeter:
    """Measures source forgetting of a model against its pretrained state, on fixed source images.

    The constructor keeps a frozen deep copy of the ORIGINAL head (module
    ``head`` of ``pretrained``) and computes the reference once: the
    pretrained model's pooled block outputs and its original-head predictions
    on ``source_x`` (and its source accuracy when ``source_y`` is given).
    ``pretrained`` itself is not modified, not even moved between devices.

    Args:
        pretrained: the pretrained model with its original source head.
        head: qualified module name of that head (an ``nn.Module`` taking the
            features; typically an ``nn.Linear``).
        blocks: module names whose outputs CKA compares (global-average pooled
            as in :func:`probes.capture`).
        source_x: (N, ...) preprocessed source images (a fixed batch; a few
            hundred are enough for CKA and agreement).
        source_y: (N,) source labels (-1 = unlabelled) or None.
        device: where the measuring passes run; measured models must be there.
        batch_size: images per forward pass.
        max_samples: use only the first ``max_samples`` images (None = all);
            the cost of every :meth:`measure` is one forward pass over them.
        token_pool: how a block's token sequence (N, T, D) is pooled: ``"mean"``
            or ``"cls"`` (see :func:`probes.capture`).
        memory_format: the layout of every measuring pass: ``"auto"`` (the
            layout measured once for the architecture and kept,
            :func:`diagnose.models.choose_layout`, for inference on the device the
            measured model is on), ``"contiguous"``
            or ``"channels_last"`` as requested. The choice and its reason are
            :attr:`layout`.
    """

    def __init__(
        self,
        pretrained: nn.Module,
        *,
        head: str,
        blocks: list[str],
        source_x: torch.Tensor,
        source_y: torch.Tensor | None,
        device: torch.device | str,
        batch_size: int = 128,
        max_samples: int | None = None,
        token_pool: str = "mean",
        memory_format: str = "auto",
    ):
        modules = dict(pretrained.named_modules())
        _check_meter_args(modules, type(pretrained).__name__, head, blocks, batch_size)
        x = _as_tensor(source_x, "source_x")
        y = None if source_y is None else _as_tensor(source_y, "source_y").long()
        if y is not None and y.shape != (x.shape[0],):
            raise ValueError(
                f"'source_y' must have shape ({x.shape[0]},) to match 'source_x' {tuple(x.shape)}. "
                f"Got {tuple(y.shape)} instead."
            )
        if max_samples is not None:
            x = x[: int(max_samples)]
            y = None if y is None else y[: int(max_samples)]
        if x.shape[0] < 2:
            raise ValueError(
                f"ForgettingMeter needs at least 2 source images (CKA). Got {x.shape[0]}."
            )
        if token_pool not in TOKEN_POOLS:
            raise ValueError(
                f"The 'token_pool' parameter of ForgettingMeter must be 'mean' or 'cls'. "
                f"Got {token_pool!r}."
            )
        if memory_format not in _LAYOUTS:
            raise ValueError(
                f"The 'memory_format' parameter of ForgettingMeter must be one of "
                f"{', '.join(map(repr, _LAYOUTS))}. Got {memory_format!r}."
            )
        self.token_pool = token_pool
        self.head = head
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.source_x = x
        self.source_y = y if y is not None and bool((y >= 0).any()) else None
        self._head = copy.deepcopy(modules[head]).to(self.device).eval()
        for p in self._head.parameters():
            p.requires_grad_(False)

        reference = pretrained
        params = list(pretrained.parameters())
        if params and params[0].device != self.device:
            # Never move the caller's model; the copy gets the layout the trained copies have.
            reference = copy.deepcopy(pretrained).to(
                self.device, memory_format=core.memory_format(self.device)
            )
        self.requested_layout = memory_format
        self.layout = self._layout(reference, self.device)
        self.reference_features, preds = self._pass(reference)
        if preds is None or not all(np.isfinite(f).all() for f in self.reference_features.values()):
            raise ValueError("The pretrained model gives non-finite features on 'source_x'.")
        self.reference_predictions: torch.Tensor = preds
        self.reference_source_accuracy: float | None = self._accuracy(self.reference_predictions)

    @property
    def n(self) -> int:
        """Number of source images each measurement uses."""
        return int(self.source_x.shape[0])

    def _layout(self, model: nn.Module, device: torch.device) -> Layout:
        """The layout of a pass of ``model`` on ``device``: requested, or the kept one."""
        if self.requested_layout != "auto":
            return Layout(self.requested_layout, "requested")
        return choose_layout(model, self.source_x[: self.batch_size], device, training=False)

    def _pass(
        self, model: nn.Module, layers: list[str] | None = None
    ) -> tuple[dict[str, np.ndarray], torch.Tensor]:
        """One forward pass: pooled outputs of ``layers`` (the blocks by default) and
        original-head predictions."""
        model = base_model_of(model)  # a PeftModel: the adapted network, plain block names
        preds: list[torch.Tensor] = []
        finite: list[torch.Tensor] = []

        def pre_hook(module: nn.Module, args: tuple) -> None:
            z = args[0]
            if z.device != next(self._head.parameters(), z).device:
                self._head.to(z.device)
            finite.append(torch.isfinite(z).all())
            preds.append(self._head(z).argmax(dim=1).to("cpu"))

        # A CPU-built tracker may measure a model moved to a GPU (or a copy sent to a GPU
        # worker): the layout is the one for the device the model is on.
        first = next(model.parameters(), None)
        here = first.device if first is not None else self.device
        layout = self.layout if here.type == self.device.type else self._layout(model, here)
        handle = model.get_submodule(self.head).register_forward_pre_hook(pre_hook)
        try:
            with autocast_context(self.device):
                feats = capture(
                    model,
                    self.source_x,
                    layers=self.blocks if layers is None else layers,
                    batch_size=self.batch_size,
                    progress=False,
                    token_pool=self.token_pool,
                    memory_format=layout.name,
                )
        finally:
            handle.remove()
        if not preds:
            raise ValueError(f"The head {self.head!r} was not called by the model's forward pass.")
        ok = bool(torch.stack(finite).all())
        return dict(feats.features), torch.cat(preds) if ok else None

    def _accuracy(self, preds: torch.Tensor) -> float | None:
        if self.source_y is None:
            return None
        known = self.source_y >= 0
        return float((preds[known] == self.source_y[known]).double().mean())

    def measure(self, model: nn.Module) -> dict[str, Any]:
        """Forgetting of ``model`` (which has the NEW head at ``head``) relative to the pretrained one.

        One forward pass over the source images in eval mode without
        gradients (train/eval flags restored) captures the pooled block
        outputs and the head's input; the stored original head applied to
        that input gives the source predictions.

        Returns:
            ``{"source_accuracy": float in [0, 1] or None without labels,
            "agreement": float in [0, 1], "cka": {block: float, 1.0 = unchanged},
            "diverged": bool}``; a model whose features reaching the head are not
            finite is ``diverged`` and gets None for the entries it cannot give,
            instead of an error.
        """
        return self.measure_with_predictions(model)[0]

    def measure_with_predictions(
        self, model: nn.Module
    ) -> tuple[dict[str, Any], torch.Tensor | None]:
        """:meth:`measure` plus the original head's source predictions from the same pass.

        The predictions (a long tensor, one class per source image; None when
        the features are not finite) let a caller break the accuracy down per
        class without a second forward pass.
        """
        feats, preds = self._pass(model)
        sims: dict[str, float | None] = {}
        for b in self.blocks:
            if not np.isfinite(feats[b]).all():
                sims[b] = None  # a diverged model: no similarity to speak of
                continue
            value = cka(self.reference_features[b], feats[b], kernel="linear")
            sims[b] = float(value) if math.isfinite(value) else None
        return {**self._agreement(preds), "cka": sims}, preds

    def agreement(self, model: nn.Module) -> dict[str, Any]:
        """:meth:`measure` without the blocks' CKA: the original head's source accuracy and
        agreement, from one forward pass that keeps nothing but the (new) head's small
        output (what a race trial reads, and no more).

        Returns:
            ``{"source_accuracy", "agreement", "diverged"}`` as :meth:`measure` gives them.
        """
        return self._agreement(self._pass(model, layers=[self.head])[1])

    def _agreement(self, preds: torch.Tensor | None) -> dict[str, Any]:
        if preds is None:  # non-finite features reach the head: predictions mean nothing
            return {"source_accuracy": None, "agreement": None, "diverged": True}
        return {
            "source_accuracy": self._accuracy(preds),
            "agreement": float((preds == self.reference_predictions).double().mean()),
            "diverged": False,
        }


def suggest_source_samples(
    n_train: int, n_val: int = 0, *, budget: float = 0.03, floor: int = 64, cap: int = 1024
) -> int:
    """How many source images keep forgetting tracking within ``budget`` of training time.

    Each :meth:`ForgettingMeter.measure` is one forward pass over its source
    images, once per epoch; an epoch costs about ``3 * n_train`` image-passes
    (forward + backward) plus ``n_val`` for validation. So ``n_source <=
    budget * (3 * n_train + n_val)`` keeps the forward passes near ``budget``;
    the default 3% leaves room for the rest of ``measure`` (hooks, pooling, CKA:
    about a fifth of its time on the demo CNN) under a 5% total. Clipped to
    ``[floor, cap]``: below ~64 images agreement and CKA get noisy, so small
    targets pay a larger share.

    Example:
        >>> suggest_source_samples(538, 179)   # the demo target: the floor
        64
        >>> suggest_source_samples(10_000, 2_000)
        960
    """
    want = int(budget * (3 * int(n_train) + int(n_val)))
    return int(max(floor, min(cap, want)))


# Forgetting measured between epochs may take at most this share of a run's training:
# each measurement is a forward pass over the source images (plus CKA and weight drift),
# each epoch about three passes over the training images. Only tiny targets (an epoch of
# a step or two against 64 source images) measure less often than every epoch.
MEASURE_SHARE = 0.25


def forgetting_interval(n_source: int, n_train: int, share: float = MEASURE_SHARE) -> int:
    """Epochs between two forgetting measurements so that they cost at most ``share`` of training.

    A measurement costs about ``n_source`` image forwards, an epoch ``3 * n_train``;
    the result depends on the data's sizes only, never on the machine.

    Example:
        >>> forgetting_interval(64, 538)   # the demo target: every epoch
        1
        >>> forgetting_interval(48, 16)    # 16 training images: every 4th epoch
        4
    """
    return max(1, math.ceil(int(n_source) / (share * 3 * max(1, int(n_train)))))
