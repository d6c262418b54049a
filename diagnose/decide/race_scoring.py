"""How the trial race scores: its folds over train+val and the paired gap between two candidates.

Kept apart from the schedule (:mod:`diagnose.decide.race`): these decide what a
held-out accuracy means and how sure a lead is, whatever the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import RepeatedStratifiedKFold

from diagnose.decide.race_record import PairedGap, ScoringProtocol

__all__ = [
    "Fold",
    "KFOLD_REPEATS",
    "KFOLD_SPLITS",
    "SMALL_VAL",
    "Z95",
    "paired_gap",
    "scoring_folds",
]

# Under this many val images one split resolves nothing finer than about +-10
# points (2 sqrt(p(1-p)/m) at p = 0.9, m = 30; REFERENCES.md): score by k-fold.
SMALL_VAL = 200
KFOLD_SPLITS = 3
KFOLD_REPEATS = 2
# z of a two-sided 95% normal interval.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Fold:
    """One scoring split: indices (into the labelled pool) to train on and to score on."""

    train: np.ndarray
    held_out: np.ndarray


def scoring_folds(
    y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, *, seed: int
) -> tuple[list[Fold], ScoringProtocol]:
    """The race's scoring folds over the labelled pool ``y`` and how they were made.

    A val split of at least :data:`SMALL_VAL` images is used as it is; a
    smaller one is merged with train and re-split by repeated stratified
    k-fold (:data:`KFOLD_SPLITS` folds, fewer when a class has fewer images;
    :data:`KFOLD_REPEATS` repeats on a pool under :data:`SMALL_VAL` images, else one).
    The images of a class with a single labelled image train in every fold and are
    never scored: held out, that class would be unseen in training, and a val split
    kept instead would score a few images. Indices are into ``y``; the test split never
    enters.
    """
    train_idx, val_idx = np.asarray(train_idx), np.asarray(val_idx)
    if len(val_idx) >= SMALL_VAL:
        return [Fold(train_idx, val_idx)], ScoringProtocol(
            "val split", 1, 1, int(len(train_idx) + len(val_idx)), int(len(val_idx))
        )
    pool = np.sort(np.concatenate([train_idx, val_idx]))
    counts = np.bincount(y[pool])
    single = pool[counts[y[pool]] == 1]
    scored = pool[counts[y[pool]] >= 2]
    if len(np.unique(y[scored])) < 2:
        return [Fold(train_idx, val_idx)], ScoringProtocol(
            "val split", 1, 1, int(len(pool)), int(len(val_idx)),
            note="fewer than two classes have two labelled images, so no stratified "
            "k-fold is possible",
        )  # fmt: skip
    splits = min(KFOLD_SPLITS, int(counts[y[scored]].min()))
    # A second partition only where one is noisy: on a pool of SMALL_VAL images or more,
    # every image scored once already resolves about +-5 points.
    repeats = KFOLD_REPEATS if len(pool) < SMALL_VAL else 1
    rskf = RepeatedStratifiedKFold(n_splits=splits, n_repeats=repeats, random_state=seed)
    folds = [
        Fold(np.sort(np.concatenate([scored[tr], single])), scored[te])
        for tr, te in rskf.split(scored, y[scored])
    ]
    note = None
    if len(single):
        note = (
            f"{len(single)} image(s) of classes with a single labelled image train in every "
            "fold and are never scored"
        )
    return folds, ScoringProtocol(
        "repeated stratified k-fold over train+val", splits, repeats, int(len(pool)),
        int(len(scored)), note=note,
    )  # fmt: skip


def paired_gap(a: np.ndarray, b: np.ndarray, image_ids: np.ndarray) -> PairedGap:
    """Per-image accuracy gap of ``a`` over ``b`` (bool arrays on the same held-out entries).

    Repeated folds score an image more than once, so the differences are
    averaged per image first and the interval treats images, not entries, as
    independent: mean +- 1.96 sd / sqrt(images).
    """
    diff = a.astype(np.float64) - b.astype(np.float64)
    ids, inv = np.unique(image_ids, return_inverse=True)
    per_image = np.bincount(inv, weights=diff) / np.bincount(inv)
    m = len(ids)
    mean = float(per_image.mean())
    sd = float(per_image.std(ddof=1)) if m > 1 else 0.0
    half = Z95 * sd / math.sqrt(m) if m > 1 else float("inf")
    return PairedGap(mean, mean - half, mean + half, int(m))
