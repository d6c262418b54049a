"""The state and steps of one strategy run (the engine behind :func:`diagnose.training.runner.run_strategy`).

:class:`StrategyRun` builds the trained copy (new head, parameter groups,
BatchNorm modules per group, the drift reference), runs the strategy's
stages and keeps the curves, the best-validation state and the cost phases;
:func:`diagnose.training.entry.build_entry` turns it into the results entry.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from diagnose.core import autocast_context, is_cuda, to_device
from diagnose.measure import WeightDrift, forgetting_interval
from diagnose.models import (
    HEAD,
    Layout,
    apply_lora,
    choose_layout,
    lora_targets,
    module_groups,
    parameter_groups,
    random_init_copy,
    replace_module,
)
from diagnose.training.activations import build_prefix_cache
from diagnose.training.adapted import FROZEN_NORMS, select_trained
from diagnose.training.batches import iterate_batches, make_loader, steps_per_epoch
from diagnose.training.curves import BestState, detect_overfitting, finite_or_none
from diagnose.training.head_stages import HeadStages, cpu_state
from diagnose.training.loop import Fitter, Phase, evaluate
from diagnose.training.strategies import Plan, Stage, plan
from probes import logits_of

__all__ = [
    "StrategyRun",
    "planned_epochs",
]


def planned_epochs(plan: Plan, epochs: int) -> int:
    """Every epoch a strategy's stages run, the total of its progress bar.

    A stage with its own ``epochs`` (feature extraction's head, LP-FT's linear
    probe, both on cached features) counts them; stages that split the shared
    budget by step fraction (gradual unfreezing) count ``epochs`` once.
    """
    stages = plan.stages
    own = sum(int(s.epochs) for s in stages if s.epochs is not None)
    return own + (epochs if any(s.epochs is None for s in stages) else 0)


class StrategyRun(HeadStages):
    """One strategy run: ``build``, then one of the strategy methods, then ``finish``.

    ``trial=True`` is a race trial: it is scored only by its last-epoch weights
    (:meth:`predict`), so no epoch validates, measures forgetting or drift, or
    keeps a best state; a non-finite training loss still stops it as diverged.
    """

    def __init__(
        self,
        name,
        model,
        head,
        blocks,
        data,
        tracker,
        config,
        device,
        progress,
        reuse=None,
        trial: bool = False,
    ):
        from tqdm.auto import tqdm

        self.plan = plan(name, blocks, config)
        # LoRA keeps every BatchNorm's statistics: the adapter alone holds what changed.
        self.bn = "frozen" if self.plan.params == "lora" else config.bn
        # ``reuse``: a dict shared by runs of the same pretrained model on the same data
        # tensors (the trial race): the head's input features and the frozen prefix's
        # outputs depend on neither the LR nor the epochs, so they are computed once.
        self.reuse, self.trial = reuse, trial
        self.name, self.model, self.head, self.blocks = name, model, head, list(blocks)
        self.data, self.tracker, self.config, self.device = data, tracker, config, device
        self.best, self.curves = BestState(), []
        self.phases: list[Phase] = []
        self.stage_records = [s.to_dict() for s in self.plan.stages]
        self.diverged = self.overfitting = None
        # A trial's mean training loss per fine-tuning epoch: nothing else is measured, and
        # a loss that ends above where it started says the LR was too high for the run.
        self.trial_losses: list[float] = []
        self.prefix_cache, self.prefix_reason = False, "no block stays frozen through training"
        self.lora_layers: list[str] | None = None  # the layers LoRA adapted, once built
        self.steps_done = 0
        self.test_accuracy = None
        self.final: dict[str, Any] | None = None
        self.final_drift: dict[str, float] = {}
        self.best_measure: tuple | None = None
        self.bar = tqdm(
            total=planned_epochs(self.plan, config.epochs),
            desc=name,
            unit="epoch",
            disable=not progress,
            leave=False,
        )

    # -- set-up ---------------------------------------------------------------------------
    def build(self) -> None:
        cfg = self.config
        src = (
            random_init_copy(self.model, seed=cfg.seed)
            if self.plan.init == "random"
            else copy.deepcopy(self.model)
        )
        old = src.get_submodule(self.head)
        in_features = getattr(old, "in_features", None)
        if not isinstance(in_features, int):
            raise ValueError(
                f"The head {self.head!r} is a {type(old).__name__} without an int 'in_features'; "
                "pass the qualified name of the final nn.Linear."
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            new_head = nn.Linear(in_features, self.data.num_classes)
        replace_module(src, self.head, new_head)
        b = cfg.batch_size
        self.layout = (
            choose_layout(src, self.data.x_train[:b], self.device, training=True)
            if cfg.memory_format is None
            else Layout(cfg.memory_format, "decided once for the run (TrainConfig)")
        )
        self.net = src.to(self.device, memory_format=self.layout.memory_format)
        plain = parameter_groups(self.net, self.blocks, self.head)
        head_names = set(plain[HEAD])
        # The pretrained weights, for drift and L2-SP's pull: a race trial reads neither.
        needed = not self.trial or self.plan.penalty is not None
        self.w0 = {
            n: p.detach().clone()
            for n, p in self.net.named_parameters()
            if needed and n not in head_names
        }
        self.drift = None if self.trial else WeightDrift(self.w0, plain)
        self.peft_model = self._adapt() if self.plan.params == "lora" else None
        groups = select_trained(self.net, self.plan.params, self.blocks, self.head)
        params = dict(self.net.named_parameters())
        self.groups = groups
        self.group_params = {g: [params[n] for n in names] for g, names in groups.items()}
        self.owners = module_groups(self.net, self.blocks, self.head)
        self.bn_modules: dict[str, list[nn.Module]] = {g: [] for g in groups}
        for mname, m in self.net.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and mname in self.owners:
                # Under LoRA no block's statistics move: the adapter alone holds the change.
                owner = FROZEN_NORMS if self.plan.params == "lora" else self.owners[mname]
                self.bn_modules.setdefault(owner, []).append(m)
        # Forgetting (and drift) every ``measure_every`` epochs, the last one always; a best
        # epoch in between is measured at the end, on the restored best state.
        n_source = getattr(self.tracker, "n", 0) or 0
        self.measure_every = forgetting_interval(n_source, len(self.data.y_train))
        for p in self.net.parameters():
            p.requires_grad_(False)
        trained = self.plan.trained_groups()
        self.trainable_params = int(sum(p.numel() for g in trained for p in self.group_params[g]))

    def _adapt(self) -> Any:
        """Put LoRA on the plan's layers (peft); the network stays ``self.net``, adapted in
        place, inside the returned ``PeftModel`` (kept to save the adapter)."""
        lora = self.plan.lora or {}
        adapted = [b for b in self.blocks if b in self.plan.trained_groups()]
        targets = lora_targets(
            self.net, self.blocks, self.head, adapted=adapted, targets=lora.get("targets")
        )
        self.lora_layers = targets
        return apply_lora(
            self.net, targets, rank=lora["rank"], alpha=lora["alpha"], head=self.head
        ).to(self.device)

    # -- measurement ----------------------------------------------------------------------
    def measure(self) -> tuple[dict | None, dict[str, float]]:
        fm = self.tracker.measure(self.net) if self.tracker is not None else None
        return fm, self.drift(self.net)

    def record(
        self, epoch, train, val, fm, drift, lr_head, snapshot, stage, tick=True, measured=True
    ) -> bool:
        """Append a curve point; keep the state if best; return False on divergence: a
        non-finite val loss, or source outputs that are not finite (total forgetting).

        ``tick`` advances the progress bar by the epoch this point ends (False when
        the epochs were already counted, as LP-FT's probe epochs are)."""
        val_loss, val_acc = val
        bad = (
            f"validation {val_loss}"
            if val_loss is None or finite_or_none(val_loss) is None
            else "source outputs not finite"
            if (fm or {}).get("diverged")
            else None
        )
        if bad is not None:
            self.diverged = {
                "step": self.steps_done,
                "epoch": int(epoch),
                "lr": finite_or_none(lr_head),
                "loss": bad,
                "stage": stage,
            }
            return False
        fm = fm or {}
        self.curves.append(
            {
                "epoch": int(epoch),
                "step": int(self.steps_done),
                "stage": stage,
                "train_loss": finite_or_none(train["train_loss"]),
                "train_accuracy": finite_or_none(train["train_accuracy"]),
                "val_loss": finite_or_none(val_loss),
                "val_accuracy": finite_or_none(val_acc),
                "source_accuracy": finite_or_none(fm.get("source_accuracy")),
                "agreement": finite_or_none(fm.get("agreement")),
                "cka": {k: finite_or_none(v) for k, v in (fm.get("cka") or {}).items()},
                "weight_drift": {k: finite_or_none(v) for k, v in drift.items()},
                "lr_head": finite_or_none(lr_head),
            }
        )
        if self.best.offer(epoch, val_acc, val_loss, snapshot):
            # The best state IS this epoch's state: its forgetting needs no second pass,
            # unless this epoch was not measured (None: measured in finish()).
            self.best_measure = (fm or None, drift) if measured else None
        if self.overfitting is None:
            self.overfitting = detect_overfitting(
                [c["train_loss"] for c in self.curves],
                [c["val_loss"] for c in self.curves],
                [c["epoch"] for c in self.curves],
            )
        self.bar.set_postfix(
            train=f"{train['train_loss'] or 0.0:.3f}", val=f"{val_loss:.3f}", acc=f"{val_acc:.3f}"
        )
        if tick:
            self.bar.update(1)
        return True

    def set_train_modes(self, trainable: list[str]) -> None:
        self.net.train()
        if self.bn == "frozen":
            for g, modules in self.bn_modules.items():
                if g not in trainable:
                    for m in modules:
                        m.eval()

    # -- strategies (the head-only stages are in HeadStages) --------------------------------
    def _prefix_cache(self, stages: tuple[Stage, ...], trainable: list[str]):
        """The frozen prefix's cached outputs for ``stages`` (from ``reuse`` when there), or
        None when no block stays frozen through them or caching is refused."""
        d, cfg = self.data, self.config
        # Frozen parameters have requires_grad=False, so autograd records nothing for a
        # frozen prefix (the same as running it under no_grad); caching skips it entirely.
        if not (self.plan.frozen_prefix_cache and len(stages) == 1):
            return None
        cache_phase = Phase("prefix_cache")
        key = ("prefix", id(d.x_train), id(d.x_val), tuple(trainable), self.bn)
        if self.reuse is not None and key in self.reuse:
            pc, reason = self.reuse[key]
        else:
            pc, reason = build_prefix_cache(
                self.net,
                owners=self.owners,
                blocks=self.blocks,
                trainable=trainable,
                bn=self.bn,
                splits={"train": d.x_train, "val": d.x_val},
                batch_size=cfg.batch_size,
                device=self.device,
                set_train_modes=lambda: self.set_train_modes(stages[0].trainable),
                phase=cache_phase,
            )
            if self.reuse is not None:
                self.reuse[key] = (pc, reason)
        self.prefix_cache, self.prefix_reason = pc is not None, reason
        if pc is not None:
            self.phases.append(cache_phase)
        return pc

    def _fitter(self, stages: tuple[Stage, ...], epochs: int, phase: str) -> Fitter:
        """The optimiser loop of ``stages`` (L2-SP's pull and weight decay as the plan says)."""
        cfg = self.config
        penalty, decay = None, dict.fromkeys(self.group_params, cfg.weight_decay)
        if self.plan.penalty is not None:
            pairs = [
                (p, self.w0[n])
                for g, names in self.groups.items()
                if g != HEAD
                for n, p in zip(names, self.group_params[g])
            ]
            penalty = (float(self.plan.penalty["alpha"]), pairs)
            decay = {g: (cfg.weight_decay if g == HEAD else 0.0) for g in self.group_params}
        return Fitter(
            root=self.net,
            groups=self.group_params,
            stages=stages,
            total_steps=epochs * steps_per_epoch(len(self.data.y_train), cfg.batch_size),
            momentum=cfg.momentum,
            weight_decay=decay,
            device=self.device,
            penalty=penalty,
            bn_modules=self.bn_modules,
            bn=self.bn,
            phase_prefix=phase,
        )

    def fine_tune(
        self, stages: tuple[Stage, ...], epochs: int, phase: str, record_index: int = 0
    ) -> None:
        d, cfg, dev, net = self.data, self.config, self.device, self.net
        trainable = sorted({g for s in stages for g in s.trainable}, key=[*self.blocks, HEAD].index)
        pc = self._prefix_cache(stages, trainable)
        train = (d.x_train, pc.cache["train"], d.y_train) if pc else (d.x_train, d.y_train)
        val = (d.x_val, pc.cache["val"], d.y_val) if pc else (d.x_val, d.y_val)
        loader = make_loader(train, cfg.batch_size, cfg.seed, dev)
        fitter = self._fitter(stages, epochs, phase)
        nb = is_cuda(dev)

        def forward(batch):
            if pc is not None:
                x, c, y = batch
                pc.set(to_device(c, dev))
            else:
                x, y = batch
            return net(to_device(x, dev, self.layout.memory_format)), y.to(dev, non_blocking=nb)

        base = self.steps_done
        for epoch in range(1, epochs + 1):
            with pc.active(net) if pc is not None else nullcontext():
                res = fitter.run_epoch(loader, forward, epoch)
                if res["diverged"]:
                    self.diverged = dict(
                        res["diverged"], step=base + res["diverged"]["step"], stage=phase
                    )
                    break
                if self.trial:  # scored by its last epoch alone: nothing to measure now
                    self.trial_losses.append(float(res["train_loss"]))
                    self.steps_done = base + fitter.step
                    self.bar.update(1)
                    continue
                net.eval()
                with autocast_context(dev):
                    v = evaluate(forward, iterate_batches(val, cfg.batch_size, None))
            self.steps_done = base + fitter.step
            if not self._end_epoch(epoch, epochs, res, v, fitter):
                break
        self.steps_done = base + fitter.step
        self.phases.extend(fitter.phases)
        for i, ph in enumerate(fitter.phases):
            self.stage_records[record_index + i]["steps"] = ph.steps

    def _end_epoch(self, epoch: int, epochs: int, res: dict, v: tuple, fitter: Fitter) -> bool:
        """Measure (every ``measure_every`` epochs and the last) and record a fine-tuning
        epoch; False when the run must stop (diverged)."""
        label = fitter.phases[fitter.stage].name
        if finite_or_none(v[0]) is None:  # weights blew up in the last steps
            self.record(epoch, res, v, None, {}, fitter.lr_head, None, label)
            return False
        measured = epoch % self.measure_every == 0 or epoch == epochs
        fm, drift = self.measure() if measured else (None, {})
        net = self.net
        return self.record(
            epoch, res, v, fm, drift, fitter.lr_head, lambda: cpu_state(net), label,
            measured=measured,
        )  # fmt: skip

    def train(self) -> None:
        """Run every stage of the plan (after :meth:`build`)."""
        if self.plan.route == "head":
            self.feature_extraction()
        elif self.plan.route == "probe_then_tune":
            self.lp_ft()
        else:
            phase = "stage" if self.plan.staged else "train"
            self.fine_tune(self.plan.stages, self.config.epochs, phase)

    # -- the end ----------------------------------------------------------------------------
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 CPU logits of the current (last-epoch) weights on ``x``, in eval mode."""
        self.net.eval()
        out = []
        with torch.no_grad(), autocast_context(self.device):
            for (xb,) in iterate_batches((x,), self.config.batch_size, None):
                xb = to_device(xb, self.device, self.layout.memory_format)
                out.append(logits_of(self.net(xb)).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.data.num_classes)

    def finish(self) -> None:
        if self.best.state is None:
            return
        self.net.load_state_dict(self.best.state, strict=False)
        self.net.eval()
        bs, d, dev = self.config.batch_size, self.data, self.device
        if self.plan.route == "head":  # the backbone never changed: its cached features
            head = self.net.get_submodule(self.head)
            y = d.y_test.to(dev)
            _, self.test_accuracy = evaluate(
                lambda b: (head(b[0]), b[1]), iterate_batches((self.fe_test, y), bs, None)
            )
        else:

            def fwd(b):
                return self.net(to_device(b[0], dev, self.layout.memory_format)), b[1].to(dev)

            with autocast_context(dev):
                _, self.test_accuracy = evaluate(
                    fwd, iterate_batches((d.x_test, d.y_test), bs, None)
                )
        if self.best_measure is None:  # the best epoch fell between two measurements
            fm, drift = self.measure()
            self.best_measure = (fm or None, drift)
        fm, drift = self.best_measure
        self.final, self.final_drift = fm, drift
