"""The head-only stages of a strategy run: a new head trained on cached features.

Feature extraction trains only the new head, and LP-FT starts with that linear
probe. Both read the head's input features, computed once by the pretrained
backbone (:func:`diagnose.training.activations.capture_head_inputs`) and shared
through the run's ``reuse`` cache by every LR and candidate of a race. This is
a mixin of :class:`diagnose.training.strategy_run.StrategyRun`, whose state
(``net``, ``data``, ``config``, ``plan``, phases and records) it reads.
"""

from __future__ import annotations

import torch
from torch import nn

from diagnose.models import HEAD
from diagnose.training.activations import capture_head_inputs
from diagnose.training.batches import iterate_batches, steps_per_epoch
from diagnose.training.curves import finite_or_none
from diagnose.training.loop import Fitter, Phase, evaluate
from diagnose.training.strategies import Stage

__all__ = [
    "HeadStages",
    "cpu_state",
]

# Rows of cached features per call of the head in its per-epoch validation pass.
_EVAL_ROWS = 1024


def cpu_state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module``'s state dict, keys prefixed by ``prefix``."""
    return {prefix + k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class HeadStages:
    """Feature extraction and LP-FT's linear probe, on the head's cached input features."""

    def head_fitter(self, stage: Stage, epochs: int, n: int, phase: str) -> Fitter:
        """The optimiser loop of the head alone (``n`` training images, ``epochs`` epochs)."""
        head = self.net.get_submodule(self.head)
        return Fitter(
            root=head,
            groups={HEAD: self.group_params[HEAD]},
            stages=[stage],
            total_steps=epochs * steps_per_epoch(n, self.config.batch_size),
            momentum=self.config.momentum,
            weight_decay={HEAD: self.config.weight_decay},
            device=self.device,
            use_autocast=False,
            phase_prefix=phase,
        )

    def fit_head(self, stage, epochs, feats, on_epoch, phase) -> None:
        """Train the new head on cached (train, val) features; ``on_epoch(e, train, val, lr)``
        after each epoch returns False to stop."""
        d, cfg, dev = self.data, self.config, self.device
        head = self.net.get_submodule(self.head)
        y_tr, y_va = d.y_train.to(dev), d.y_val.to(dev)
        fitter = self.head_fitter(stage, epochs, len(y_tr), phase)
        gen = torch.Generator().manual_seed(cfg.seed)
        fwd = lambda b: (head(b[0]), b[1])  # noqa: E731
        # The head alone on (N, D) features: its eval pass takes many rows a call (one or a
        # few calls per epoch instead of one per training batch).
        eval_rows = max(cfg.batch_size, _EVAL_ROWS)
        base = self.steps_done
        for e in range(1, epochs + 1):
            res = fitter.run_epoch(iterate_batches((feats[0], y_tr), cfg.batch_size, gen), fwd, e)
            self.steps_done = base + fitter.step
            if res["diverged"]:
                self.diverged = dict(
                    res["diverged"], step=base + res["diverged"]["step"], stage=phase
                )
                break
            if self.trial:  # scored by its last epoch alone (see StrategyRun)
                self.bar.update(1)
                continue
            head.eval()
            val = evaluate(fwd, iterate_batches((feats[1], y_va), eval_rows, None))
            if not on_epoch(e, res, val, fitter.lr_head):
                break
        self.steps_done = base + fitter.step
        self.phases.extend(fitter.phases)
        self.stage_records[0]["steps"] = fitter.step

    def head_inputs(self, xs: list[torch.Tensor], cap: Phase) -> list[torch.Tensor]:
        """The head's input features for ``xs`` (pretrained backbone), from ``reuse`` when there."""
        key = ("head_inputs", *(id(x) for x in xs))
        if self.reuse is not None and key in self.reuse:
            return self.reuse[key]
        feats = capture_head_inputs(
            self.net, self.head, xs, self.config.batch_size, self.device, cap,
            self.layout.memory_format,
        )  # fmt: skip
        if self.reuse is not None:
            self.reuse[key] = feats
        return feats

    def feature_extraction(self) -> None:
        """Train the new head on the frozen backbone's features (one measurement of forgetting)."""
        d, head = self.data, self.net.get_submodule(self.head)
        cap = Phase("capture")
        self.phases.append(cap)
        feats = self.head_inputs([d.x_train, d.x_val, d.x_test], cap)
        self.fe_test = feats[2]
        fm, drift = (None, {}) if self.trial else self.measure()  # once: the backbone is fixed

        def on_epoch(e, res, val, lr):
            snap = lambda: cpu_state(head, self.head + ".")  # noqa: E731
            return self.record(e, res, val, fm, drift, lr, snap, "head")

        stage = self.plan.stages[0]
        self.fit_head(stage, stage.epochs, feats, on_epoch, "head")

    def lp_ft(self) -> None:
        """The linear probe on cached features, then every layer fine-tuned from it."""
        d, cfg = self.data, self.config
        lp, ft = self.plan.stages
        cap = Phase("capture")
        self.phases.append(cap)
        feats = self.head_inputs([d.x_train, d.x_val], cap)
        last: dict = {}

        def on_epoch(e, res, val, lr):
            last.update(res=res, val=val, lr=lr)
            self.bar.update(1)  # each probe epoch is one of the bar's epochs
            return finite_or_none(val[0]) is not None

        self.fit_head(lp, cfg.lp_epochs, feats, on_epoch, "linear_probe")
        if self.trial and not self.diverged:
            self.fine_tune([ft], cfg.epochs, "fine_tune", record_index=1)
            return
        if self.diverged or not last:
            return
        if finite_or_none(last["val"][0]) is None:
            self.record(
                0, last["res"], last["val"], None, {}, last["lr"], None, "linear_probe", tick=False
            )
            return
        fm, drift = self.measure()
        ok = self.record(
            0,
            last["res"],
            last["val"],
            fm,
            drift,
            last["lr"],
            lambda: cpu_state(self.net),
            "linear_probe",
            tick=False,
        )
        if ok:
            self.fine_tune([ft], cfg.epochs, "fine_tune", record_index=1)
