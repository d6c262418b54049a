"""The measurements of an assessment, on features captured once.

Each measurement that fails on odd data (non-finite features, a class too
small to split) is recorded as null with a warning; it never ends the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import probes
from diagnose._prep import prepared_dataset
from diagnose.imagestats import ImageStats
from diagnose.lr_find import lr_range_test
from diagnose.rgn import relative_gradient_norms

__all__ = ["layer_measurements", "lr_find_head", "safe", "target_rgn", "transferability"]


def safe(what: str, warnings: list[str], fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``fn(*args, **kwargs)``; a ValueError/LinAlgError becomes None plus a warning."""
    try:
        out = fn(*args, **kwargs)
        return out.to_dict() if hasattr(out, "to_dict") else out
    except (ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
        warnings.append(f"{what} was skipped: {exc}")
        return None


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1)


def _probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int):
    keep = _finite_rows(x)
    if not keep.all():
        raise ValueError(f"{int((~keep).sum())} samples have NaN or infinite features")
    return probes.linear_probe(x[train], y[train], x[test], y[test], seed=seed)


def _gap(source: np.ndarray, target: np.ndarray, n_permutations: int, seed: int):
    for what, x in (("source", source), ("target", target)):
        keep = _finite_rows(x)
        if not keep.all():
            raise ValueError(f"{int((~keep).sum())} {what} samples have NaN or infinite features")
    return probes.domain_gap(source, target, n_permutations=n_permutations, seed=seed)


def layer_measurements(
    layers: list[str],
    target_feats: dict[str, np.ndarray] | None,
    control_feats: dict[str, np.ndarray] | None,
    target_labels: np.ndarray | None,
    target_split: dict[str, np.ndarray] | None,
    source_feats: dict[str, np.ndarray] | None,
    source_labels: np.ndarray | None,
    source_split: dict[str, np.ndarray] | None,
    *,
    seed: int,
    n_permutations: int,
    warnings: list[str],
    progress: bool,
) -> list[dict]:
    """Per layer: target, control and source probes and the source-target gap."""
    rows = []
    for name in tqdm(layers, desc="probes and gaps", disable=not progress, leave=False):
        row: dict = {"name": name, "dim": None, "probe": {}, "gap": None}
        if target_feats is not None:
            row["dim"] = int(target_feats[name].shape[1])
        elif source_feats is not None:
            row["dim"] = int(source_feats[name].shape[1])
        probe_row = {"target": None, "control": None, "source": None}
        if target_feats is not None and target_labels is not None and target_split is not None:
            tr = np.concatenate([target_split["train"], target_split["val"]])
            te = target_split["test"]
            probe_row["target"] = safe(
                f"target probe at {name}",
                warnings,
                _probe,
                target_feats[name],
                target_labels,
                tr,
                te,
                seed,
            )
            if control_feats is not None:
                probe_row["control"] = safe(
                    f"control probe at {name}",
                    warnings,
                    _probe,
                    control_feats[name],
                    target_labels,
                    tr,
                    te,
                    seed,
                )
        if source_feats is not None and source_labels is not None and source_split is not None:
            tr = np.concatenate([source_split["train"], source_split["val"]])
            probe_row["source"] = safe(
                f"source probe at {name}",
                warnings,
                _probe,
                source_feats[name],
                source_labels,
                tr,
                source_split["test"],
                seed,
            )
        row["probe"] = probe_row
        if source_feats is not None and target_feats is not None:
            row["gap"] = safe(
                f"domain gap at {name}",
                warnings,
                _gap,
                source_feats[name],
                target_feats[name],
                n_permutations,
                seed,
            )
        rows.append(row)
    return rows


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def transferability(
    features: np.ndarray,
    labels: np.ndarray,
    source_logits: np.ndarray | None,
    *,
    layer: str,
    warnings: list[str],
) -> dict:
    """LogME and H-score on the penultimate features; LEEP and NCE from the source head."""
    out: dict = {"layer": layer, "logme": None, "h_score": None, "leep": None, "nce": None}
    out["logme"] = safe("LogME", warnings, probes.logme, features, labels)
    out["h_score"] = safe("H-score", warnings, probes.h_score, features, labels)
    if source_logits is not None:
        probs = _softmax(source_logits)
        if np.isfinite(probs).all():
            out["leep"] = safe("LEEP", warnings, probes.leep, probs, labels)
            out["nce"] = safe("NCE", warnings, probes.nce, probs.argmax(axis=1), labels)
        else:
            warnings.append("LEEP and NCE were skipped: the source head's outputs are not finite.")
    else:
        warnings.append("LEEP and NCE were skipped: the model has no source classification head.")
    return out


def lr_find_head(
    features: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    *,
    seed: int,
    progress: bool,
    batch_size: int = 32,
) -> dict:
    """LR range test for a new linear head on the (frozen) penultimate features."""
    x = torch.as_tensor(features[train_idx], dtype=torch.float32)
    y_np = labels[train_idx]
    classes = np.unique(y_np)
    y = torch.as_tensor(np.searchsorted(classes, y_np), dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    batches = [
        (x[order[i : i + batch_size]], y[order[i : i + batch_size]])
        for i in range(0, len(x), batch_size)
    ]
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], len(classes))
    res = lr_range_test(head, batches, num_steps=100, progress=progress)
    out = res.to_dict()
    out["batch_size"] = batch_size
    out["optimizer"] = "SGD, momentum 0.9"
    return out


def target_rgn(net, head, blocks, tgt, used, train_positions, prep, seed, dev, n_max=128):
    """Auto-RGN per block on up to ``n_max`` target training images."""
    rng = np.random.default_rng(seed)
    pick = np.sort(
        rng.choice(train_positions, size=min(n_max, len(train_positions)), replace=False)
    )
    data = prepared_dataset(tgt, used[pick], prep, ImageStats())
    x, y = next(iter(torch.utils.data.DataLoader(data, batch_size=len(data))))
    classes = np.unique(tgt.labels)
    y = torch.as_tensor(np.searchsorted(classes, np.asarray(y)), dtype=torch.long)
    return relative_gradient_norms(
        net, head=head, blocks=blocks, x=x, y=y, num_classes=len(classes), seed=seed, device=dev
    )
