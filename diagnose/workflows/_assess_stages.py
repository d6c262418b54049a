"""The stages of an assessment between its capture pass and its recommendation.

:func:`diagnose.assess` runs them in the order of the data flow: the captured
features split by role (:func:`features_by_role`), the measurements at the
penultimate block that need labels (transferability, the head's LR range test,
Auto-RGN and the source head's accuracy: :func:`head_measurements`), and the
image statistics with the normalisation check (:func:`image_statistics`). Each
adds what it skipped, and why, to the run's warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from diagnose.core import LayerResult
from diagnose.data import Domain, ImageStats, Preprocessing, drift_table, normalization_check
from diagnose.measure import layers as _measure
from diagnose.measure import lr_find_head
from diagnose.models import LoadedModel

__all__ = ["Features", "Prepared", "features_by_role", "head_measurements", "image_statistics"]


@dataclass(frozen=True)
class Prepared:
    """What the assessment's steps after the capture read: the model and the data as
    they were prepared for it.

    Attributes:
        loaded: the model, its head and its declared input.
        net: the network, on ``device``.
        layers: the probed blocks, in forward order.
        src, tgt: the source and target domains (None: not given).
        used: per role (``"source"``, ``"target"``), the images used (indices into the domain).
        splits: per role, the train/val/test positions into ``used`` (None: no split).
        prep: how images are prepared for the model.
        device: where the network runs.
    """

    loaded: LoadedModel
    net: nn.Module
    layers: list[str]
    src: Domain | None
    tgt: Domain | None
    used: dict[str, np.ndarray]
    splits: dict[str, dict | None]
    prep: Preprocessing
    device: torch.device


@dataclass
class Features:
    """Pooled features per block and labels of each role (None: not captured or unusable).

    Attributes:
        target, control: the pretrained and random-init features of the target images.
        target_labels: their labels (None when none is labelled).
        source, source_labels: the pretrained features of the source images and labels.
    """

    target: dict[str, np.ndarray] | None = None
    control: dict[str, np.ndarray] | None = None
    target_labels: np.ndarray | None = None
    source: dict[str, np.ndarray] | None = None
    source_labels: np.ndarray | None = None


def features_by_role(captured: dict, layer_names: list[str], warnings: list[str]) -> Features:
    """The capture passes' features as :class:`Features`; the passes' warnings and
    unlabelled images are said."""
    for cap in captured.values():
        warnings.extend(getattr(cap, "warnings", []))
    out = Features()
    if "target" in captured:
        cap = captured["target"]
        out.target = {n: cap.features[f"pretrained.{n}"] for n in layer_names}
        out.control = {n: cap.features[f"control.{n}"] for n in layer_names}
        tl = cap.labels
        if tl is not None and (tl < 0).any():
            warnings.append(
                "Some target images are unlabelled; target probes use labelled ones only."
            )
            tl = None if (tl < 0).all() else tl
        out.target_labels = tl
    if "source" in captured:
        out.source, out.source_labels = captured["source"].features, captured["source"].labels
        if out.source_labels is not None and (out.source_labels < 0).any():
            warnings.append("Source images are unlabelled: the source probe is skipped.")
            out.source_labels = None
    else:
        warnings.append("No source data: the domain gap and the source probe are skipped.")
    return out


def head_measurements(
    feats: Features,
    rows: list[LayerResult],
    captured: dict,
    run: Prepared,
    *,
    seed: int,
    progress: bool,
    warnings: list[str],
) -> tuple[dict | None, dict | None, dict[str, float], list[LayerResult]]:
    """``(transferability, LR range test, head accuracies, rows with Auto-RGN)``.

    ``run`` is the prepared model and data. Without labelled target features only the
    source head is scored.
    """
    loaded, layers, src, tgt = run.loaded, run.layers, run.src, run.tgt
    has_head, last = loaded.head is not None, layers[-1]
    transfer = lr_find = None
    heads: dict[str, float] = {}
    tf, tl = feats.target, feats.target_labels
    if tf is not None and tl is not None:
        split = run.splits["target"]
        logits = captured["target"].output if has_head else None
        transfer = _measure.transferability(
            tf[last], tl, logits, layer=last, warnings=warnings, seed=seed
        )
        train_idx = np.concatenate([split["train"], split["val"]])
        lr_find = _measure.safe(
            "LR range test", warnings, lr_find_head, tf[last], tl, train_idx,
            seed=seed, progress=progress,
        )  # fmt: skip
        if has_head:
            rgn = _measure.safe(
                "relative gradient norms", warnings, _measure.target_rgn, run.net,
                loaded.head, layers, tgt, run.used["target"], split["train"], run.prep,
                seed, run.device,
                # The capture passes' layout (a speed choice only: the values differ by
                # float rounding between layouts).
                memory_format=captured["target"].memory_format,
            )  # fmt: skip
            rows = [replace(row, rgn=(rgn or {}).get(row.name)) for row in rows]
        if has_head and loaded.source_classes and tgt.classes == loaded.source_classes:
            heads["target_head_accuracy"] = float((logits.argmax(1) == tl).mean())
    sl = feats.source_labels
    if has_head and sl is not None and src.classes == loaded.source_classes:
        heads["source_head_accuracy"] = float((captured["source"].output.argmax(1) == sl).mean())
    return transfer, lr_find, heads, rows


def image_statistics(
    stats: dict[str, ImageStats], prep: Preprocessing, loaded: LoadedModel, warnings: list[str]
) -> dict:
    """Per-domain image statistics, their drift, and the target's normalisation check
    against what the model expects (the normalisation applied, the model's own, or the
    source images')."""
    out: dict = {k: v.to_dict() for k, v in stats.items()}
    if "source" in stats and "target" in stats:
        out["drift"] = drift_table(stats["source"], stats["target"])
    if "target" not in stats:
        return out
    if prep.mean is not None:
        mean, std, frm = prep.mean, prep.std, "the normalisation applied"
    elif loaded.mean is not None:
        mean, std, frm = list(loaded.mean), list(loaded.std), "the model's weights"
    elif "source" in stats:
        mean, std = stats["source"].channel_mean(), stats["source"].channel_std()
        frm = "the source images, which the model was trained on"
    else:
        mean = std = None
        frm = "nothing: the model declares no normalisation and there is no source data"
    check, norm_warnings = normalization_check(stats["target"], mean, std, frm)
    out["normalization_check"] = check
    warnings.extend(norm_warnings)
    return out
