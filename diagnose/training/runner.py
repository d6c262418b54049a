"""Run one fine-tuning strategy on target data and measure what it gains, forgets and costs.

:func:`run_strategy` deep-copies the pretrained model (the caller's model is
never modified), gives it a new linear head for the target classes, trains it
as :func:`diagnose.training.strategies.plan` says, evaluates after every epoch and
returns a plain-JSON results entry: target accuracy at the best-validation
epoch, source forgetting, cost and curves. Divergence (a non-finite loss) and
overfitting are reported in the entry, not raised.

Example:
    >>> data = TargetData(x_tr, y_tr, x_va, y_va, x_te, y_te, num_classes=3)
    >>> entry = run_strategy("discriminative", lm.model, head="head",
    ...                      blocks=["block1", "block2", "block3", "block4"], data=data,
    ...                      tracker=None, config=TrainConfig(epochs=5), device=torch.device("cpu"))
    >>> entry["status"], entry["target"]["test_accuracy"]
    ('ok', 0.93)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from diagnose.core import atomic_torch_save, configure_backends, is_cuda
from diagnose.models import adapter_dir_for, merged_state_dict, parameter_groups, save_adapter
from diagnose.training.config import TrainConfig
from diagnose.training.cost import PeakMemory
from diagnose.training.entry import build_entry
from diagnose.training.strategy_run import StrategyRun, cpu_state

if TYPE_CHECKING:
    from diagnose.measure import ForgettingMeter

__all__ = [
    "TargetData",
    "run_strategy",
]


@dataclass
class TargetData:
    """Preprocessed target tensors: x float32 (N, C, H, W) normalised, y int64 in [0, num_classes)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    def sizes(self) -> dict[str, int]:
        """Images per split (``n_train``, ``n_val``, ``n_test``): every accuracy counts these."""
        return {f"n_{s}": int(len(getattr(self, f"y_{s}"))) for s in ("train", "val", "test")}

    def check(self) -> None:
        """Raise ValueError/TypeError unless every split is consistent and non-empty."""
        if (
            isinstance(self.num_classes, bool)
            or not isinstance(self.num_classes, int)
            or self.num_classes < 2
        ):
            raise ValueError(
                f"TargetData.num_classes must be an int >= 2. Got {self.num_classes!r} instead."
            )
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"TargetData.x_{split} and y_{split} must be torch tensors.")
            if not x.is_floating_point() or y.dtype != torch.int64 or y.ndim != 1:
                raise TypeError(
                    f"TargetData: x_{split} must be floating and y_{split} int64 of shape (N,). "
                    f"Got {x.dtype} and {y.dtype} {tuple(y.shape)}."
                )
            if x.shape[0] != y.shape[0] or x.shape[0] < (2 if split == "train" else 1):
                raise ValueError(
                    f"TargetData: x_{split} {tuple(x.shape)} and y_{split} {tuple(y.shape)} must have "
                    f"the same number of rows, at least {2 if split == 'train' else 1}."
                )
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(
                    f"TargetData: y_{split} must lie in [0, {self.num_classes}). "
                    f"Got [{int(y.min())}, {int(y.max())}]."
                )


def run_strategy(
    name: str,
    model: nn.Module,
    *,
    head: str,
    blocks: list[str],
    data: TargetData,
    tracker: ForgettingMeter | None,
    config: TrainConfig,
    device: torch.device,
    progress: bool = True,
    checkpoint_path: str | None = None,
) -> dict:
    """Train strategy ``name`` from ``model`` on ``data``; return its results entry.

    ``model`` is the pretrained network with its original source head at the
    qualified name ``head``; it is deep-copied and never modified. The copy's
    head is replaced by ``nn.Linear(in_features, data.num_classes)`` seeded by
    ``config.seed`` (``scratch``: the copy is re-initialised first). SGD with
    momentum, per-group LRs from :func:`plan`, a cosine schedule without
    warm-up over all steps (lp_ft: one per stage), batch order fixed by
    ``config.seed``. After each epoch: running train loss/accuracy, validation
    loss/accuracy, ``tracker.measure`` and weight drift. The best-validation
    state (highest accuracy, ties to lower loss) is kept in memory (on the
    CPU); test accuracy is measured on it, final forgetting and drift are
    those measured at its epoch (the same weights, so no second pass), and it
    is saved to ``checkpoint_path`` (atomically) when given.

    Partial fine-tuning caches the frozen prefix's output once when that is
    safe (verified on one batch; see ``diagnose.training.activations``), else runs the
    prefix every step without recording gradients; ``config["prefix_cache"]``
    and ``config["prefix_cache_reason"]`` say which and why.

    Returns the results entry (JSON types only; floats finite or None):

    - ``name``, ``status`` ("ok" | "diverged"), ``message`` (str | None);
    - ``diverged``: ``{"step", "epoch", "lr", "loss", "stage"}`` or None: the
      1-based global step whose loss was non-finite, its epoch, the head's LR
      then and the loss as a string ("nan", "inf");
    - ``overfitting``: ``{"epoch", "detail"}`` or None (validation loss rose 2
      epochs running while training loss fell; training went on);
    - ``config``: ``lr`` (main stage), ``stages`` (with ``steps``), ``frozen``,
      ``trainable``, ``epochs``, ``batch_size``, ``optimizer``, ``momentum``,
      ``weight_decay``, ``schedule``, ``bn``, ``init``, ``l2_sp_alpha``,
      ``lp_epochs``, ``prefix_cache``, ``prefix_cache_reason``,
      ``cached_features``, ``drift_reference``, ``seed``, ``device``, ``backends``;
    - ``target``: ``val_accuracy`` (best), ``test_accuracy`` (at the best
      epoch), ``best_epoch`` (lp_ft: 0 = after the linear probe), ``val_loss``;
    - ``forgetting``: ``source_accuracy``, ``source_accuracy_before``,
      ``source_accuracy_drop``, ``agreement``, ``cka`` {block: v},
      ``weight_drift`` {block: v}, all on the best state;
    - ``cost``: ``wall_s``, ``flops`` (sum over phases of FLOPs of one counted
      step x steps), ``flops_per_step`` (main training phase), ``steps``
      (optimiser steps), ``trainable_params``, ``peak_mem_bytes``,
      ``peak_mem_kind`` ("cuda_allocated" | "process_rss"), ``phases``;
    - ``curves``: one dict per evaluation: ``epoch``, ``step``, ``stage``,
      ``train_loss``, ``train_accuracy``, ``val_loss``, ``val_accuracy``,
      ``source_accuracy``, ``agreement``, ``cka``, ``weight_drift``, ``lr_head``.

    A diverged run keeps the curves up to divergence and reports target and
    forgetting of the best state before it (None without one). Exceptions
    (bad arguments, a model that fails) propagate; the caller marks the
    strategy failed. Runs on ``device`` with the choices of
    ``diagnose.core.device`` (bf16 autocast, channels_last, pinned loaders on
    CUDA); bit-identical repeats are guaranteed on CPU.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"The 'model' parameter must be an nn.Module. Got {type(model).__name__} instead."
        )
    if not isinstance(data, TargetData):
        raise TypeError(
            f"The 'data' parameter must be a TargetData. Got {type(data).__name__} instead."
        )
    data.check()
    device = torch.device(device)
    parameter_groups(model, list(blocks), head)  # validates the names before any work
    run = StrategyRun(name, model, head, blocks, data, tracker, config, device, progress)
    backends = configure_backends(device)
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if is_cuda(device)
        else []
    )
    start = time.perf_counter()
    try:
        with PeakMemory(device) as mem, torch.random.fork_rng(devices=cuda):
            torch.manual_seed(config.seed)
            run.build()
            run.train()
            run.finish()
    finally:
        run.bar.close()
    wall = time.perf_counter() - start
    if checkpoint_path is not None and run.best.state is not None:
        # finish() left the best state in run.net: the full model, head included. An
        # adapted model is saved merged (loads into the plain architecture) and, beside
        # it, as the adapter in peft's own format.
        adapted = run.peft_model is not None
        atomic_torch_save(
            merged_state_dict(run.net) if adapted else cpu_state(run.net), checkpoint_path
        )
        if adapted:
            save_adapter(run.peft_model, adapter_dir_for(checkpoint_path))
    return build_entry(run, wall, mem, backends)
