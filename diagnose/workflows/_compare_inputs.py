"""What a comparison trains and measures on: its base assessment, target splits, source meter.

:func:`diagnose.compare` prepares these once, before any strategy trains:
the assessment it builds on (run now, read back on ``--resume``, or a bare
stub), the target's train/val/test images in memory, and the forgetting meter
on a fixed batch of held-out source images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diagnose.core import SCHEMA_VERSION, Recommendation
from diagnose.data import drop_positions, materialize_readable, restricted_splits, subsample
from diagnose.models import LoadedModel
from diagnose.training import RUN_KEYS, TargetData
from diagnose.workflows.assessment import assess

__all__ = ["assessment_prediction", "base_results", "target_data"]


def base_results(
    previous: dict | None, with_assessment: bool, loaded: LoadedModel, src, tgt, **assess_kw: Any
) -> dict:
    """The results a comparison builds on.

    On resume (``previous``: the run's results.json) the assessment on disk, with
    only its own warnings; else :func:`diagnose.assess` of ``loaded`` on ``src`` and
    ``tgt`` with ``assess_kw``, or, without an assessment, a stub with the model.
    """
    if previous is not None:
        base = {k: v for k, v in previous.items() if k not in RUN_KEYS}
        n_base = previous.get("compare_config", {}).get("base_warnings", 0)
        base["warnings"] = previous.get("warnings", [])[:n_base]
        return base
    if with_assessment:
        return assess(loaded, src, tgt, **assess_kw).to_dict()
    return {"schema": SCHEMA_VERSION, "model": loaded.to_dict(), "warnings": [], "layers": []}


def assessment_prediction(base: dict) -> Recommendation | None:
    """The recommendation of the assessment a comparison builds on, typed (read once, here,
    from its results: run now or read back from disk on ``--resume``); None without one."""
    rec = base.get("recommendation")
    return Recommendation.from_dict(rec) if isinstance(rec, dict) and rec else None


def target_data(
    tgt, prep, *, max_samples: int | None, seed: int, warnings: list[str]
) -> tuple[TargetData, np.ndarray, dict[str, np.ndarray]]:
    """``(data, used, split)``: the target's splits in memory, the images used (indices
    into ``tgt``) and the split positions. An image that fails to decode is left out of
    every split, with a warning."""
    used = subsample(tgt, max_samples, seed)
    split = restricted_splits(tgt, used, seed)
    x, y, skipped = materialize_readable(tgt, used, prep, warnings)
    used, split = drop_positions(used, split, skipped)
    data = TargetData(
        x_train=x[split["train"]],
        y_train=y[split["train"]],
        x_val=x[split["val"]],
        y_val=y[split["val"]],
        x_test=x[split["test"]],
        y_test=y[split["test"]],
        num_classes=len(tgt.classes or []) or int(y.max()) + 1,
    )
    return data, used, split
