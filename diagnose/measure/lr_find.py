"""Learning-rate range test (Smith 2017; fastai's ``lr_find``).

The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_steps``
optimiser steps; the loss is smoothed with a bias-corrected exponential moving
average, the test stops once the smoothed loss exceeds ``diverge`` times the
best seen (or turns non-finite), and the suggestion is the LR of the steepest
descent of the smoothed loss against log10(LR), taken *before* the minimum
so it sits in the stable region rather than at the edge of divergence.

The model's parameters, buffers and train/eval flags are restored afterwards,
so the test has no side effect.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from probes import logits_of

__all__ = [
    "LRFindResult",
    "LR_TEST_MOMENTUM",
    "MAX_SPREAD",
    "MIN_DISTINCT_BATCHES",
    "RANGE_REPEATS",
    "consensus_lr",
    "lr_find_head",
    "lr_range_test",
    "suggest_lr",
]

# Under this many distinct batches a range test cycles the same few images: its curve
# is a training curve on them, and its steepest descent moves by decades with the batch
# order and the head's initialisation (2.7e-6 on a real case, 8.5 on a 24-image target).
# There the test is repeated RANGE_REPEATS times and the suggestions must agree.
MIN_DISTINCT_BATCHES = 10
RANGE_REPEATS = 5
# Repeated suggestions spread over more than this factor (largest / smallest) are noise.
MAX_SPREAD = 10.0
# The range test's optimiser is the training engine's (TrainConfig's momentum), so the LR it
# suggests is one for the same SGD.
LR_TEST_MOMENTUM = 0.9


def consensus_lr(suggestions: list[float | None]) -> tuple[float | None, str | None]:
    """One LR from repeated range tests: their geometric median, or None and why.

    None when fewer than half the tests suggested an LR, or when the suggestions
    spread over more than :data:`MAX_SPREAD` (the test measured its batches' noise).

    Example:
        >>> consensus_lr([0.01, 0.02, 0.015, None, 0.012])
        (0.0134, None)
    """
    got = sorted(s for s in suggestions if s is not None and s > 0)
    if not got or len(got) * 2 < len(suggestions):
        return None, (
            f"Only {len(got)} of {len(suggestions)} repeated range tests found a steady "
            "descent: no LR is suggested; the race's grid uses the usual head LRs."
        )
    if got[-1] / got[0] > MAX_SPREAD:
        return None, (
            f"{len(suggestions)} repeated range tests on these few images suggested LRs from "
            f"{got[0]:.2g} to {got[-1]:.2g}, more than {MAX_SPREAD:g}x apart: batch noise, so "
            "no LR is suggested; the race's grid uses the usual head LRs."
        )
    mid = float(np.exp(np.median(np.log(got))))
    return float(f"{mid:.3g}"), None


@dataclass
class LRFindResult:
    """Outcome of a range test. ``losses`` are smoothed, ``raw_losses`` as measured."""

    lrs: list[float]
    losses: list[float]
    raw_losses: list[float]
    suggested_lr: float | None
    min_loss_lr: float | None
    stop_reason: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "suggested_lr": self.suggested_lr,
            "min_loss_lr": self.min_loss_lr,
            "lrs": self.lrs,
            "losses": self.losses,
            "raw_losses": self.raw_losses,
            "stop_reason": self.stop_reason,
            "notes": self.notes,
        }


def suggest_lr(
    lrs: np.ndarray, losses: np.ndarray, skip_start: int = 5
) -> tuple[float | None, float | None]:
    """Return (steepest-descent LR before the minimum, LR at the minimum smoothed loss).

    ``None`` when the curve is too short or never descends.
    """
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    if finite.sum() < skip_start + 3:
        return None, None
    lrs, losses = lrs[finite], losses[finite]
    i_min = int(np.argmin(losses))
    min_lr = float(lrs[i_min])
    if i_min <= skip_start + 1:
        return None, min_lr
    grads = np.gradient(losses[: i_min + 1], np.log10(lrs[: i_min + 1]))
    window = grads[skip_start:i_min]
    if window.size == 0 or window.min() >= 0:
        return None, min_lr
    i_steep = skip_start + int(np.argmin(window))
    return float(lrs[i_steep]), min_lr


def _cross_entropy(output, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits_of(output), y)


def _scaled_groups(params) -> list[dict]:
    """SGD parameter groups of the trainable ``params`` (tensors or groups), each with its
    ``lr_scale`` (1 unless given); groups left with no trainable tensor are dropped."""
    items = list(params)
    if items and not isinstance(items[0], dict):
        items = [{"params": items}]
    out = []
    for g in items:
        trainable = [p for p in g["params"] if p.requires_grad]
        if trainable:
            out.append({"params": trainable, "lr_scale": float(g.get("lr_scale", 1.0))})
    return out


def lr_range_test(
    model: nn.Module,
    batches: Iterable,
    *,
    params: Iterable[nn.Parameter] | Iterable[dict] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    start_lr: float = 1e-6,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    momentum: float = 0.9,
    device: str | torch.device = "cpu",
    progress: bool = True,
    desc: str = "lr range test",
) -> LRFindResult:
    """Run an LR range test with SGD (momentum) on ``model`` and restore it afterwards.

    ``batches`` yields ``(x, y)``; it is cycled when shorter than ``num_steps``.
    ``params`` defaults to the trainable parameters; parameter groups
    (``{"params": [...], "lr_scale": 0.1}``) train at ``lr_scale`` times the swept
    LR, so the test sweeps one LR of a fixed ratio between groups. The default loss is the
    cross-entropy of the logits (:func:`probes.logits_of` of the model's
    output, so dict and tuple outputs work); a ``loss_fn`` gets the output as
    the model returns it. ``desc`` labels the progress bar. Example::

        head = nn.Linear(128, 10)
        res = lr_range_test(head, [(feats, labels)], num_steps=100)
        res.suggested_lr  # e.g. 0.3
    """
    if not (0 < start_lr < end_lr):
        raise ValueError(f"lr_range_test needs 0 < start_lr < end_lr. Got {start_lr} and {end_lr}.")
    if num_steps < 10:
        raise ValueError(f"lr_range_test needs num_steps >= 10. Got {num_steps}.")
    loss_fn = loss_fn or _cross_entropy
    saved_state = copy.deepcopy(model.state_dict())
    saved_modes = {name: m.training for name, m in model.named_modules()}
    groups = _scaled_groups(params if params is not None else model.parameters())
    if not groups:
        raise ValueError("lr_range_test found no trainable parameters in the model.")
    optimizer = torch.optim.SGD(groups, lr=start_lr, momentum=momentum)
    gamma = (end_lr / start_lr) ** (1.0 / (num_steps - 1))
    lrs: list[float] = []
    raw: list[float] = []
    smooth: list[float] = []
    avg, best = 0.0, math.inf
    stop_reason = "reached end_lr"
    batch_list = list(batches) if not isinstance(batches, list) else batches
    if not batch_list:
        raise ValueError("lr_range_test got no batches.")
    try:
        model.train()
        bar = tqdm(range(num_steps), desc=desc, disable=not progress, leave=False)
        for step in bar:
            lr = start_lr * gamma**step
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            x, y = batch_list[step % len(batch_list)]
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                stop_reason = f"loss became non-finite at lr={lr:.3g}"
                break
            loss.backward()
            optimizer.step()
            avg = smoothing * avg + (1 - smoothing) * value
            smoothed = avg / (1 - smoothing ** (step + 1))
            lrs.append(lr)
            raw.append(value)
            smooth.append(smoothed)
            best = min(best, smoothed)
            if step > 0 and smoothed > diverge * best:
                stop_reason = f"smoothed loss exceeded {diverge:g}x its minimum at lr={lr:.3g}"
                break
    finally:
        model.load_state_dict(saved_state)
        for name, m in model.named_modules():
            m.train(saved_modes.get(name, m.training))
    suggested, min_lr = suggest_lr(np.array(lrs), np.array(smooth))
    notes = []
    if suggested is None:
        notes.append("The loss never descended steadily; no LR is suggested from this curve.")
    return LRFindResult(lrs, smooth, raw, suggested, min_lr, stop_reason, notes)


def lr_find_head(
    features: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    *,
    seed: int,
    progress: bool,
    batch_size: int = 32,
    num_steps: int = 100,
) -> dict:
    """LR range test for a new linear head on the (frozen) penultimate features.

    The test takes ``num_steps`` minibatches of a seeded shuffle of the training
    rows, so only those ``num_steps x batch_size`` rows are read (``n_examples``).
    With fewer than :data:`~diagnose.measure.lr_find.MIN_DISTINCT_BATCHES` distinct
    batches it is repeated over seeds and the suggestion is their consensus
    (:func:`~diagnose.measure.lr_find.consensus_lr`, ``repeats`` in the result), or
    None with a note when they disagree.
    """
    n_batches = math.ceil(len(train_idx) / batch_size)
    repeats = 1 if n_batches >= MIN_DISTINCT_BATCHES else RANGE_REPEATS
    runs = [
        _head_range_test(
            features,
            labels,
            train_idx,
            seed + i,
            progress,
            batch_size,
            num_steps,
            desc="lr range test" + (f" (pass {i + 1}/{repeats})" if repeats > 1 else ""),
        )  # fmt: skip
        for i in range(repeats)
    ]
    out = runs[0]
    if repeats > 1:
        out["repeats"] = [r["suggested_lr"] for r in runs]
        out["suggested_lr"], why = consensus_lr(out["repeats"])
        if why:
            out["notes"].append(why)
    return out


def _head_range_test(features, labels, train_idx, seed, progress, batch_size, num_steps, desc):
    y_all = labels[train_idx]
    classes = np.unique(y_all)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_idx), generator=gen).numpy()[: num_steps * batch_size]
    rows = train_idx[order]
    x = torch.as_tensor(np.asarray(features[rows]), dtype=torch.float32)
    y = torch.as_tensor(np.searchsorted(classes, labels[rows]), dtype=torch.long)
    batches = [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], len(classes))
    res = lr_range_test(
        head,
        batches,
        num_steps=num_steps,
        momentum=LR_TEST_MOMENTUM,
        progress=progress,
        desc=desc,
    )
    out = res.to_dict()
    out["batch_size"] = batch_size
    out["n_examples"] = len(rows)
    out["optimizer"] = f"SGD, momentum {LR_TEST_MOMENTUM:g}"
    return out
