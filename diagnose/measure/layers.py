"""The measurements of an assessment, on features captured once.

Each measurement that fails on odd data (non-finite features, a class too
small to split) is recorded as null with a warning; it never ends the run.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import probes
from diagnose.core import LayerResult, ProbeScore, as_record
from diagnose.data import materialize_readable
from diagnose.measure.rgn import relative_gradient_norms

__all__ = [
    "CKA_BATCH",
    "GAP_MAX_SAMPLES",
    "RGN_IMAGES",
    "TRANSFER_MAX_SAMPLES",
    "control_cka",
    "layer_measurements",
    "safe",
    "storage_summary",
    "target_rgn",
    "transferability",
]

# Large-N limits. Probes use every row (memmaps on the disk path); the rest
# subsample, and each result records the sizes it used.
GAP_MAX_SAMPLES = 2000  # rows per domain for PAD, MMD, Fréchet and CORAL (domain_gap's default)
TRANSFER_MAX_SAMPLES = 20000  # rows for LogME, H-score, LEEP and NCE: O(rows x D) float64
CKA_BATCH = 1024  # minibatch size of the pretrained-vs-control CKA
_CHUNK = 65536  # rows read at a time from a memmap
# Auto-RGN's images. Its spread over seeds (the new head's initialisation and the images
# drawn) is the head's: on the demo CNN, 64 and 128 images gave per-block std 0.026 and
# 0.040 over 6 seeds, and means 0.007 apart (perf_suite's "Auto-RGN at 64 vs 128 images").
# Each image costs a forward and a backward pass: at 224 px, 128 images cost half the
# assessment's plain forward over source and target.
RGN_IMAGES = 64


def safe(what: str, warnings: list[str], fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Run ``fn(*args, **kwargs)``; a ValueError/LinAlgError becomes None plus a warning."""
    try:
        out = fn(*args, **kwargs)
        return out.to_dict() if hasattr(out, "to_dict") else out
    except (ValueError, np.linalg.LinAlgError, RuntimeError) as exc:
        warnings.append(f"{what} was skipped: {exc}")
        return None


def _finite_rows(x: np.ndarray) -> np.ndarray:
    # In chunks: on a memmap, np.isfinite of the whole array would be an N x D temporary.
    parts = [np.isfinite(x[i : i + _CHUNK]).all(axis=1) for i in range(0, x.shape[0], _CHUNK)]
    return np.concatenate(parts) if parts else np.ones(0, dtype=bool)


def _gather(x: np.ndarray, idx: np.ndarray, path: Path) -> np.ndarray:
    """``x[idx]`` written chunk by chunk to a float32 .npy memmap: memory O(chunk)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(idx), x.shape[1]))
    for i in range(0, len(idx), _CHUNK):
        out[i : i + _CHUNK] = x[idx[i : i + _CHUNK]]
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def _probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int):
    keep = _finite_rows(x)
    if not keep.all():
        raise ValueError(f"{int((~keep).sum())} samples have NaN or infinite features")
    if not isinstance(x, np.memmap):
        return probes.linear_probe(x[train], y[train], x[test], y[test], seed=seed)
    # Features on disk stay on disk: the splits become memmaps too, and linear_probe
    # reads them in bounded memory. (POSIX keeps them readable once the folder goes.)
    with tempfile.TemporaryDirectory(prefix="diagnose-probe-") as tmp:
        x_train = _gather(x, train, Path(tmp) / "train.npy")
        x_test = _gather(x, test, Path(tmp) / "test.npy")
        return probes.linear_probe(x_train, y[train], x_test, y[test], seed=seed)


def _warn_unconverged(layer: str, probe_row: dict, warnings: list[str]) -> None:
    """One warning per probe of ``layer`` that stopped at its iteration limit."""
    for role, r in probe_row.items():
        if r is not None and r.get("converged") is False:
            warnings.append(
                f"The {role} probe at {layer} stopped after {r['n_iter']} L-BFGS iterations "
                f"without converging ({r.get('stop_reason')}): its accuracy may understate "
                "what the features allow."
            )


def _gap(source: np.ndarray, target: np.ndarray, n_permutations: int, seed: int) -> dict:
    for what, x in (("source", source), ("target", target)):
        keep = _finite_rows(x)
        if not keep.all():
            raise ValueError(f"{int((~keep).sum())} {what} samples have NaN or infinite features")
    # domain_gap subsamples before converting, so on-disk sets are read only where sampled.
    gap = probes.domain_gap(
        source, target, max_samples=GAP_MAX_SAMPLES, n_permutations=n_permutations, seed=seed
    ).to_dict()
    gap.update(
        max_samples=GAP_MAX_SAMPLES,
        n_source_total=int(source.shape[0]),
        n_target_total=int(target.shape[0]),
    )
    return gap


def control_cka(
    pretrained: np.ndarray, control: np.ndarray, *, seed: int, batch_size: int = CKA_BATCH
) -> dict | None:
    """Linear CKA of the pretrained vs random-init features, by ``probes.MinibatchCKA``.

    Rows are shuffled (with ``seed``: data order is often grouped by class) and
    split into near-equal minibatches of at least ``batch_size`` rows (one batch
    when N is smaller, which is the debiased full-sample CKA), so memory is
    O(batch) for any N. In [0, 1] (slightly negative possible): 1 means
    pretraining left the representation where random weights put it.
    """
    n = int(pretrained.shape[0])
    if n < 4:  # the unbiased HSIC needs 4 rows
        return None
    order = np.random.default_rng(seed).permutation(n)
    metric = probes.MinibatchCKA()
    for part in np.array_split(order, max(1, n // batch_size)):
        part = np.sort(part)  # sorted reads are sequential on a memmap
        metric.update(pretrained[part], control[part])
    return {
        "cka": metric.compute(),
        "batch_size": int(batch_size),
        "n_batches": metric.n_batches,
        "n": metric.n_samples,
        "estimator": "minibatch linear CKA, unbiased HSIC (Nguyen et al. 2021)",
    }


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
) -> list[LayerResult]:
    """Per layer: target, control and source probes and the source-target gap (no Auto-RGN:
    the assessment adds it)."""
    role_data = {
        "target": (target_feats, target_labels, target_split),
        "control": (control_feats if target_feats is not None else None, target_labels,
                    target_split),
        "source": (source_feats, source_labels, source_split),
    }  # fmt: skip
    rows = []
    for name in tqdm(layers, desc="probes and gaps", disable=not progress, leave=False):
        probe_row = {
            role: _role_probe(role, name, *d, seed, warnings) for role, d in role_data.items()
        }
        _warn_unconverged(name, probe_row, warnings)
        cka = gap = None
        if target_feats is not None and control_feats is not None:
            cka = safe(
                f"pretrained-vs-control CKA at {name}", warnings, control_cka,
                target_feats[name], control_feats[name], seed=seed,
            )  # fmt: skip
        if source_feats is not None and target_feats is not None:
            gap = safe(
                f"domain gap at {name}", warnings, _gap, source_feats[name], target_feats[name],
                n_permutations, seed,
            )  # fmt: skip
        feats = target_feats if target_feats is not None else source_feats
        rows.append(
            LayerResult(
                name=name,
                dim=None if feats is None else int(feats[name].shape[1]),
                probe={role: as_record(ProbeScore)(v) for role, v in probe_row.items()},
                gap=gap,
                cka_control=cka,
            )
        )
    return rows


def _role_probe(role: str, name: str, feats, labels, split, seed: int, warnings: list[str]):
    """The ``role`` probe at ``name`` (trained on train+val, scored on test), or None when
    its features, labels or split are missing."""
    if feats is None or labels is None or split is None:
        return None
    train = np.concatenate([split["train"], split["val"]])
    return safe(
        f"{role} probe at {name}", warnings, _probe, feats[name], labels, train, split["test"], seed
    )


def storage_summary(
    captured: dict, budget: int | None, share: int | None, layout: dict | None = None
) -> dict:
    """results.json's ``capture``: the memory budget, where each pass kept its
    features (rows, bytes, "memory" or "disk"), the memory layout its batches ran in
    (``layout``: :meth:`diagnose.models.Layout.to_dict`) and the large-N subsample limits."""
    return {
        "max_memory_bytes": budget,
        "per_pass_bytes": share,
        **{
            k: {"storage": c.storage, "n": c.n, "bytes": c.nbytes, "memory_format": layout}
            for k, c in captured.items()
        },
        "subsample": {
            "gap_max_samples": GAP_MAX_SAMPLES,
            "transferability_max_samples": TRANSFER_MAX_SAMPLES,
            "cka_batch_size": CKA_BATCH,
            "rgn_images": RGN_IMAGES,
        },
    }


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
    seed: int = 0,
) -> dict:
    """LogME and H-score on the penultimate features; LEEP and NCE from the source head.

    On more than ``TRANSFER_MAX_SAMPLES`` rows, a seeded random subset of that
    size is scored (``n`` of ``n_total`` in the result): the scores are means
    over examples, and their float64 work arrays grow with the rows.
    """
    n_total = int(features.shape[0])
    if n_total > TRANSFER_MAX_SAMPLES:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(n_total, size=TRANSFER_MAX_SAMPLES, replace=False))
        features, labels = np.asarray(features[keep]), labels[keep]
        source_logits = None if source_logits is None else np.asarray(source_logits[keep])
    out: dict = {"layer": layer, "logme": None, "h_score": None, "leep": None, "nce": None}
    out.update(n=int(features.shape[0]), n_total=n_total)
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


def target_rgn(
    net,
    head,
    blocks,
    tgt,
    used,
    train_positions,
    prep,
    seed,
    dev,
    n_max=RGN_IMAGES,
    memory_format=None,
):
    """Auto-RGN per block on up to ``n_max`` target training images (those that decode),
    in ``memory_format`` (the layout the capture pass chose: None keeps the model's)."""
    rng = np.random.default_rng(seed)
    pick = np.sort(
        rng.choice(train_positions, size=min(n_max, len(train_positions)), replace=False)
    )
    # Images that fail to decode are left out; the capture pass over them reports such files.
    x, y, _ = materialize_readable(tgt, used[pick], prep, warnings=[])
    classes = np.unique(tgt.labels[tgt.labels >= 0])  # -1: an item that could not be read
    y = torch.as_tensor(np.searchsorted(classes, np.asarray(y)), dtype=torch.long)
    return relative_gradient_norms(
        net,
        head=head,
        blocks=blocks,
        x=x,
        y=y,
        num_classes=len(classes),
        seed=seed,
        device=dev,
        memory_format=memory_format,
    )
