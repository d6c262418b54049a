"""What an audit measures on a fine-tuned model beside the forgetting meter's numbers.

:func:`diagnose.audit` asks the :class:`~diagnose.measure.ForgettingMeter` for
source CKA, agreement and accuracy; these add the rest of its report: CKA on
held-out target images (:func:`target_cka`), source accuracy per class
(:func:`source_accuracy`) and the per-block rows with weight drift
(:func:`layer_rows`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diagnose.data import materialize_readable, pick_eval, subsample
from diagnose.measure import ForgettingMeter

__all__ = ["layer_rows", "source_accuracy", "target_cka"]


def target_cka(
    tgt, ft: nn.Module, meter_kw: dict, prep, *, max_samples: int | None, n: int, seed: int,
    warnings: list[str],
) -> tuple[dict[str, float | None], int]:  # fmt: skip
    """``(CKA per block, images)`` of the pretrained vs fine-tuned model on up to ``n``
    target images (the test split's when it has two or more, as the comparison holds out).
    ``meter_kw`` are the :class:`ForgettingMeter` arguments but the images."""
    used = subsample(tgt, max_samples, seed)
    pool = used
    if tgt.labels is not None:
        held_out = used[np.isin(used, tgt.splits(seed)["test"])]
        pool = held_out if len(held_out) >= 2 else used
    tx, _, _ = materialize_readable(tgt, pick_eval(pool, n, seed), prep, warnings)
    meter = ForgettingMeter(source_x=tx, source_y=None, **meter_kw)
    return meter.measure(ft)["cka"], int(len(tx))


def source_accuracy(meter: ForgettingMeter, measured: dict, preds, classes) -> dict:
    """Source accuracy through the original head, pretrained and fine-tuned, overall
    and per class (when the source images are labelled)."""
    per_class: list[dict] = []
    if meter.source_y is not None and preds is not None:
        per_class = _per_class(meter.reference_predictions, preds, meter.source_y, classes)
    pre, post = meter.reference_source_accuracy, measured["source_accuracy"]
    return {
        "pretrained": pre,
        "finetuned": post,
        "drop": pre - post if pre is not None and post is not None else None,
        "per_class": per_class,
    }


def _per_class(ref: torch.Tensor, ft: torch.Tensor, y: torch.Tensor, classes) -> list[dict]:
    rows = []
    for c in sorted(int(v) for v in torch.unique(y[y >= 0])):
        mask = y == c
        pre = float((ref[mask] == c).double().mean())
        post = float((ft[mask] == c).double().mean())
        name = classes[c] if classes is not None and 0 <= c < len(classes) else str(c)
        rows.append(
            {
                "class": name,
                "pretrained": pre,
                "finetuned": post,
                "drop": pre - post,
                "n": int(mask.sum()),
            }
        )
    return rows


def layer_rows(
    blocks: list[str], measured: dict, cka_target: dict | None, drift: dict
) -> list[dict]:
    """Per block: CKA on the source (and target, None without target images) and drift."""
    return [
        {
            "name": b,
            "cka_source": measured["cka"].get(b),
            "cka_target": cka_target.get(b) if cka_target is not None else None,
            "weight_drift": drift.get(b),
        }
        for b in blocks
    ]
