"""One trial of the race: a candidate trained on the scoring folds, and its record.

Kept apart from the schedule (:mod:`diagnose.decide.race`): this trains and
scores one candidate with the comparison's engine and keeps what the schedule
ranks it by (per-image correctness and loss on the held-out images, FLOPs).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diagnose.decide.candidates import Candidate
from diagnose.decide.race_record import RungScore
from diagnose.training import StrategyRun

__all__ = [
    "FIXED_PHASES",
    "SHARED_PHASES",
    "Arm",
    "RaceContext",
    "phase_flops",
    "shared_tag",
    "train_trial",
]

# Phases whose cost does not grow with the epochs of the main stage: the captures,
# the prefix cache and the head stages on cached features (max(epochs, lp_epochs)).
FIXED_PHASES = ("capture", "prefix_cache", "head", "linear_probe")
# Phases whose result the trials of one race share (through ``RaceContext.reuse``): their
# FLOPs are counted once per fold and key, by the first trial in candidate order.
SHARED_PHASES = ("capture", "prefix_cache")


def shared_tag(cand: Candidate, phase: str):
    """What tells apart the shared results of one phase on one fold: the strategy for a
    head capture (feature extraction's and LP-FT's capture different splits), the depth
    for a frozen-prefix cache."""
    return cand.strategy if phase == "capture" else cand.depth


def phase_flops(phases) -> tuple[int, int]:
    """(fixed, epoch-scaled) FLOPs of a run's phases."""
    fixed = scaled = 0
    for ph in phases:
        if ph.flops_per_step is None:
            continue
        f = int(ph.flops_per_step) * int(ph.steps)
        if ph.name in FIXED_PHASES:
            fixed += f
        else:
            scaled += f
    return fixed, scaled


def train_trial(
    cand, fold_data, model, head, blocks, epochs, batch_size, seed, device, reuse, layout=None,
    meter=None,
) -> dict:  # fmt: skip
    """Train ``cand`` for ``epochs`` on one fold, in the memory ``layout`` the race chose
    (None: measured here); score its last-epoch weights, and, with a forgetting ``meter``
    (:class:`diagnose.measure.ForgettingMeter`), measure what they forgot."""
    start = time.perf_counter()
    config = cand.config(blocks, epochs=epochs, batch_size=batch_size, seed=seed)
    config = dataclasses.replace(config, memory_format=layout)
    run = StrategyRun(
        cand.strategy,
        model,
        head,
        blocks,
        fold_data,
        None,
        config,
        device,
        progress=False,
        reuse=reuse,
        trial=True,
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            run.build()
            run.train()
            logits = run.predict(fold_data.x_val)
    finally:
        run.bar.close()
    y = fold_data.y_val
    loss = F.cross_entropy(logits, y, reduction="none").double().numpy()
    correct = (logits.argmax(1) == y).numpy()
    fixed, scaled = phase_flops(run.phases)
    ok = run.diverged is None and bool(np.isfinite(loss).all())
    shared = {ph.name: int(ph.flops_per_step or 0) * int(ph.steps) for ph in run.phases}
    forgot = meter.agreement(run.net) if meter is not None and ok else None
    losses = run.trial_losses
    return {
        "loss_rose": len(losses) >= 2 and losses[-1] > losses[0],
        "forgetting": forgot,
        "shared": {k: v for k, v in shared.items() if k in SHARED_PHASES},
        "correct": correct if ok else np.zeros_like(correct),
        "loss": loss if ok else np.full_like(loss, np.inf),
        "fixed_flops": fixed,
        "scaled_flops": scaled,
        "wall_s": time.perf_counter() - start,
        "diverged": None if ok else (run.diverged or {"loss": "non-finite validation loss"}),
    }


class Arm:
    """A candidate's record across rungs."""

    def __init__(self, index: int, cand: Candidate):
        self.index, self.cand = index, cand
        self.rungs: list[RungScore] = []
        self.correct = self.loss = None
        self.fixed = self.per_epoch = 0.0  # FLOPs per fold, from its latest rung
        self.ids = None  # the held-out image of each entry of ``correct``
        self.flops = 0
        self.wall = 0.0
        self.status, self.reason, self.eliminated_at = "ok", None, None

    def estimate(self, epochs: int, folds: int) -> float:
        return (self.fixed + self.per_epoch * epochs) * folds

    def rank_key(self) -> tuple:
        if self.status != "ok":
            return (1, 0.0, 0.0, self.cand.prior_rank, self.index)
        return (
            0,
            -float(self.correct.mean()),
            float(self.loss.mean()),
            self.cand.prior_rank,
            self.index,
        )


@dataclass
class RaceContext:
    """What every trial of one race shares: the folds, the model and the engine's settings.

    ``reuse`` holds the head inputs and frozen-prefix outputs per fold, computed by the
    first candidate that needs them and reused by the rest; ``paid`` the shared results
    whose FLOPs are already counted (so a trial run elsewhere, as a Ray task that
    recomputed them, is charged what it would have cost here); ``warnings`` (when given)
    collects one line per candidate that failed. ``remote`` (a
    :class:`diagnose.decide.race_ray.RayTrials`) runs the trials as Ray tasks.
    """

    fold_data: list
    folds: list
    model: nn.Module
    head: str
    blocks: list[str]
    batch_size: int
    seed: int
    device: torch.device
    reuse: dict = field(default_factory=dict)
    warnings: list[str] | None = None
    paid: set = field(default_factory=set)
    remote: Any = None
    # FLOPs of Ray trials run with their batch but then refused by the budget check
    # (never recorded; reported as ``flops_discarded``).
    discarded: float = 0.0
    # The memory layout every trial trains in, decided once by the race (None: each
    # process measures its own).
    memory_format: str | None = None
    # What the trials of the last rung forgot (the learning-forgetting front of the race):
    # the meter of the source images, and the epochs from which trials are measured.
    meter: Any = None
    measure_at: int | None = None

    def trial(self, cand: Candidate, fold: int, epochs: int) -> dict:
        """Train ``cand`` on fold ``fold`` here (:func:`train_trial`)."""
        return train_trial(
            cand,
            self.fold_data[fold],
            self.model,
            self.head,
            self.blocks,
            epochs,
            self.batch_size,
            self.seed,
            self.device,
            self.reuse,
            self.memory_format,
            self.meter if self.measure_at is not None and epochs >= self.measure_at else None,
        )

    def run_batch(self, arms: list[Arm], bar, *, e: int, r: int, n_folds: int, admit=None):
        """Run ``arms`` for ``e`` epochs on ``n_folds`` folds as rung ``r``; yield ``(arm,
        flops)`` in order for each arm that ``admit(arm)`` (asked just before, in order;
        None: all) lets in. Here an arm not admitted never runs; through Ray the batch runs
        at once and an arm not admitted is discarded, so both record the same arms."""
        if self.remote is not None:
            outcomes = self.remote.run(arms, e, n_folds, bar)
        for a in arms:
            if admit is not None and not admit(a):
                done = outcomes[a.index] if self.remote is not None else None
                if isinstance(done, list):
                    self.discarded += sum(o["fixed_flops"] + o["scaled_flops"] for o in done)
                continue
            if self.remote is not None:
                outs = outcomes[a.index]
            else:
                outs = self._local(a, e, n_folds, bar)
            if isinstance(outs, Exception):
                yield a, self._fail(a, r, outs)
            else:
                yield a, self.record(a, outs, e, r)

    def _local(self, a: Arm, e: int, n_folds: int, bar) -> list[dict] | Exception:
        outs = []
        try:
            for fold in range(n_folds):
                outs.append(self.trial(a.cand, fold, e))
                bar.update(1)
        # One failing candidate, whatever the model raised, never ends the race.
        except Exception as exc:
            bar.update(n_folds - len(outs))
            return exc
        return outs

    def _fail(self, a: Arm, r: int, exc: Exception) -> int:
        a.status, a.eliminated_at = "failed", r
        a.reason = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if self.warnings is not None:
            self.warnings.append(f"Race candidate {a.cand.key} {a.reason}")
        return 0

    def _charge(self, cand: Candidate, fold: int, out: dict) -> int:
        """The FLOPs of shared results ``out`` computed that were already counted."""
        again = 0
        for phase, flops in out.get("shared", {}).items():
            key = (fold, phase, shared_tag(cand, phase))
            if key in self.paid:
                again += flops
            self.paid.add(key)
        return again

    def record(self, a: Arm, outs: list[dict], e: int, r: int) -> int:
        """Record ``a``'s trials (one per fold) as rung ``r`` and return the FLOPs they spent."""
        for fold, o in enumerate(outs):
            o["fixed_flops"] -= self._charge(a.cand, fold, o)
        a.correct = np.concatenate([o["correct"] for o in outs])
        a.loss = np.concatenate([o["loss"] for o in outs])
        fixed = sum(o["fixed_flops"] for o in outs)
        scaled = sum(o["scaled_flops"] for o in outs)
        a.fixed, a.per_epoch = fixed / len(outs), scaled / e / len(outs)
        a.ids = np.concatenate([f.held_out for f in self.folds[: len(outs)]])
        a.flops += fixed + scaled
        wall = sum(o["wall_s"] for o in outs)
        a.wall += wall
        bad = next((o["diverged"] for o in outs if o["diverged"]), None)
        if bad is not None:
            a.status, a.eliminated_at = "diverged", r
            a.reason = f"diverged ({bad.get('loss')}) after at most {e} epochs"
        a.rungs.append(
            RungScore(
                rung=r,
                epochs=int(e),
                val_accuracy=float(a.correct.mean()),
                val_loss=float(a.loss.mean()) if np.isfinite(a.loss).all() else None,
                fold_accuracy=tuple(float(o["correct"].mean()) for o in outs),
                folds=len(outs),
                flops=int(fixed + scaled),
                wall_s=round(wall, 4),
                loss_rose_folds=sum(bool(o.get("loss_rose")) for o in outs),
                **_mean_forgetting([o.get("forgetting") for o in outs]),
            )
        )
        return fixed + scaled


def _mean_forgetting(per_fold: list[dict | None]) -> dict:
    """:class:`RungScore`'s forgetting fields, averaged over the folds that measured them
    (nothing when a fold did not: the rung was not measured)."""
    if not per_fold or any(f is None for f in per_fold):
        return {}
    out: dict = {"forgetting_measured": True}
    for key in ("agreement", "source_accuracy"):
        values = [f[key] for f in per_fold if f.get(key) is not None]
        out[key] = float(np.mean(values)) if len(values) == len(per_fold) else None
    return out
