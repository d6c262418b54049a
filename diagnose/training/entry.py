"""The per-strategy results entry (:class:`diagnose.core.StrategyEntry`) of a finished :class:`StrategyRun`."""

from __future__ import annotations

from diagnose.core import Cost, Divergence, Forgetting, StrategyEntry, TargetScores, describe
from diagnose.models import HEAD
from diagnose.training.cost import PeakMemory
from diagnose.training.curves import finite_or_none
from diagnose.training.strategy_run import StrategyRun

__all__ = [
    "build_entry",
]

_FORWARD_ONLY = ("capture", "prefix_cache")  # phases that are passes, not optimiser steps


def build_entry(self: StrategyRun, wall: float, mem: PeakMemory, backends: dict) -> dict:
    """The results entry of ``self`` as results.json holds it: a
    :class:`~diagnose.core.StrategyEntry`'s ``to_dict()`` (see
    :func:`diagnose.training.runner.run_strategy`)."""
    return StrategyEntry(
        name=self.name,
        status="diverged" if self.diverged else "ok",
        message=_divergence_message(self),
        diverged=None
        if not self.diverged
        else Divergence(
            step=int(self.diverged["step"]),
            epoch=int(self.diverged["epoch"]),
            lr=finite_or_none(self.diverged["lr"]),
            loss=str(self.diverged["loss"]),
            stage=self.diverged.get("stage"),
        ),
        overfitting=self.overfitting,
        config=_config(self, backends),
        target=TargetScores(
            val_accuracy=finite_or_none(self.best.val_accuracy),
            test_accuracy=finite_or_none(self.test_accuracy),
            best_epoch=self.best.epoch,
            val_loss=finite_or_none(self.best.val_loss),
        ),
        forgetting=_forgetting(self),
        cost=_cost(self, wall, mem),
        curves=tuple(self.curves),
    ).to_dict()


def _divergence_message(self: StrategyRun) -> str | None:
    if not self.diverged:
        return None
    dv = self.diverged
    return (
        f"non-finite loss ({dv['loss']}) at step {dv['step']} (epoch {dv['epoch']}, "
        f"{dv.get('stage')} stage, head LR {dv['lr']}); "
        + (
            "results are from the best state before it"
            if self.best.state is not None
            else "no evaluation had completed, so there are no results"
        )
    )


def _config(self: StrategyRun, backends: dict) -> dict:
    """The entry's ``config``: what trained, how, and on what."""
    cfg, p = self.config, self.plan
    trainable = [b for b in self.blocks if any(b in s.trainable for s in p.stages)]
    return {
        "lr": dict(p.stages[-1].lr),
        "stages": self.stage_records,
        "frozen": list(p.frozen),
        "trainable": [*trainable, HEAD],
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "optimizer": f"SGD (momentum {cfg.momentum:g})",
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "weight_decay_on": "head only" if p.penalty else "all trained parameters",
        "schedule": "cosine",
        "bn": self.bn,
        "init": p.init,
        "trained_params": p.params,
        "lora": None if p.lora is None else {**p.lora, "layers": self.lora_layers},
        "l2_sp_alpha": p.penalty["alpha"] if p.penalty else None,
        "lp_epochs": cfg.lp_epochs if p.route == "probe_then_tune" else None,
        "prefix_cache": bool(self.prefix_cache),
        "prefix_cache_reason": self.prefix_reason,
        "cached_features": bool(p.cached_features),
        "drift_reference": "random init" if p.init == "random" else "pretrained",
        "seed": cfg.seed,
        # epochs between forgetting measurements (data sizes only; 1 but on tiny targets)
        "forgetting_every": self.measure_every,
        "device": describe(self.device),
        "memory_format": self.layout.to_dict(),
        "backends": backends,
    }


def _forgetting(self: StrategyRun) -> Forgetting:
    before = self.tracker.reference_source_accuracy if self.tracker is not None else None
    fm = self.final or {}
    after = finite_or_none(fm.get("source_accuracy"))
    return Forgetting(
        source_accuracy=after,
        source_accuracy_before=finite_or_none(before),
        source_accuracy_drop=(before - after) if before is not None and after is not None else None,
        agreement=finite_or_none(fm.get("agreement")),
        cka={k: finite_or_none(v) for k, v in (fm.get("cka") or {}).items()},
        weight_drift={k: finite_or_none(v) for k, v in self.final_drift.items()},
    )


def _cost(self: StrategyRun, wall: float, mem: PeakMemory) -> Cost:
    train_phases = [ph for ph in self.phases if ph.name not in _FORWARD_ONLY]
    counted = [ph for ph in self.phases if ph.flops_per_step is not None]
    main = next((ph for ph in reversed(train_phases) if ph.steps), None)
    return Cost(
        wall_s=round(float(wall), 4),
        flops=int(sum(ph.flops_per_step * ph.steps for ph in counted)),
        flops_per_step=None if main is None else main.flops_per_step,
        steps=int(sum(ph.steps for ph in train_phases)),
        trainable_params=self.trainable_params,
        peak_mem_bytes=mem.peak_bytes,
        peak_mem_kind=mem.kind,
        phases=tuple(ph.to_dict() for ph in self.phases),
    )
