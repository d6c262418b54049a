"""The optimisation loop shared by every strategy: SGD, one cosine schedule, stages, divergence.

A :class:`Fitter` trains one module (a whole network, or a head on cached
features) through a list of stages that switch which parameter groups train,
and reports each epoch's running training loss and accuracy, or the first
step whose loss was not finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diagnose.core import autocast_context, is_cuda
from diagnose.training.cost import count_train_step_flops
from diagnose.training.strategies import Stage
from probes import logits_of

__all__ = [
    "Fitter",
    "Phase",
    "evaluate",
    "fused_sgd_supported",
]

# On CUDA a per-step float(loss) would stall the GPU queue; losses are checked in
# bulk every this many steps (and at each epoch end) and the first bad one reported.
_CUDA_CHECK_EVERY = 32


def fused_sgd_supported(params: list[torch.Tensor], root: nn.Module | None = None) -> bool:
    """Whether the Fitter runs ``torch.optim.SGD(fused=True)`` on ``params`` (of ``root``).

    The fused kernel does the update in one pass instead of one per parameter (the
    optimiser step is a visible share of a small head's step). Only where safe: torch
    >= 2.4 (its CPU kernel), dense floating-point CPU parameters (the kernel walks
    memory flat: a strided view would update wrongly), no sparse-gradient embedding
    in ``root``. CUDA keeps the default kernel (not measured faster there).
    """
    major, minor = (
        int("".join(c for c in v if c.isdigit()) or 0) for v in torch.__version__.split(".")[:2]
    )
    if (major, minor) < (2, 4) or not params:
        return False
    dense = all(
        p.device.type == "cpu"
        and p.is_floating_point()
        and (p.is_contiguous() or p.is_contiguous(memory_format=torch.channels_last))
        for p in params
    )
    sparse = root is not None and any(
        isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse for m in root.modules()
    )
    return dense and not sparse


@torch.no_grad()
def evaluate(
    forward: Callable[[tuple], tuple[torch.Tensor, torch.Tensor]], batches: Iterable[tuple]
) -> tuple[float | None, float | None]:
    """Mean cross-entropy and accuracy of ``forward`` over ``batches`` (float64 sums).

    ``forward(batch)`` returns ``(output, labels)`` on one device, the output
    being the logits or what :func:`probes.logits_of` takes them from (a
    model's dict, tuple or output object). The caller sets eval mode. Returns
    (None, None) when there is no example; a non-finite loss is returned as is
    (the caller reports divergence).
    """
    loss_sum, correct, count = None, None, 0
    for batch in batches:
        output, y = forward(batch)
        logits = logits_of(output)
        loss = F.cross_entropy(logits.float(), y, reduction="sum").double()
        hits = (logits.argmax(dim=1) == y).sum()
        loss_sum = loss if loss_sum is None else loss_sum + loss
        correct = hits if correct is None else correct + hits
        count += int(y.shape[0])
    if count == 0:
        return None, None
    return float(loss_sum) / count, float(correct) / count


@dataclass
class Phase:
    """A distinct kind of step (a stage, a capture pass) and how many were run."""

    name: str
    flops_per_step: int | None = None
    steps: int = 0

    def to_dict(self) -> dict:
        flops = None if self.flops_per_step is None else int(self.flops_per_step) * int(self.steps)
        return {
            "name": self.name,
            "flops_per_step": self.flops_per_step,
            "steps": self.steps,
            "flops": flops,
        }


class Fitter:
    """SGD with momentum through ``stages`` under one cosine schedule of ``total_steps``.

    Args:
        root: the module trained (its train/eval flags are set each epoch).
        groups: parameter group -> parameters.
        stages: plan stages (``trainable``, ``lr``, and ``until_step_fraction``
            when there are several); the first ``round(fraction * total)`` steps
            belong to the stages up to that one.
        total_steps: steps of the whole schedule.
        weight_decay: group -> SGD weight decay.
        penalty: ``(alpha, [(param, w0), ...])`` adds alpha (w - w0) to each
            gradient, the gradient of alpha/2 ||w - w0||^2 (L2-SP).
        bn_modules: group -> its BatchNorm modules; those of groups that do not
            train in the current stage are kept in eval mode when ``bn="frozen"``.
        use_autocast: run the forward under ``_device.autocast_context``.
        phase_prefix: names the phases, one per stage: ``prefix`` alone for a
            single stage, else ``f"{prefix}{i}"``.
    """

    def __init__(
        self,
        *,
        root: nn.Module,
        groups: dict[str, list[nn.Parameter]],
        stages: list[Stage] | tuple[Stage, ...],
        total_steps: int,
        momentum: float,
        weight_decay: dict[str, float],
        device: torch.device,
        penalty: tuple[float, list[tuple[nn.Parameter, torch.Tensor]]] | None = None,
        bn_modules: dict[str, list[nn.Module]] | None = None,
        bn: str = "frozen",
        use_autocast: bool = True,
        phase_prefix: str = "stage",
    ):
        self.root, self.groups, self.stages = root, groups, stages
        self.total = max(int(total_steps), 1)
        self.device, self.bn, self.use_autocast = device, bn, use_autocast
        self.bn_modules = bn_modules or {}
        self.penalty = penalty
        ends = [
            round((1.0 if s.until_step_fraction is None else s.until_step_fraction) * self.total)
            for s in stages
        ]
        ends[-1] = self.total
        self.ends = ends
        ever = [g for g in groups if any(g in s.trainable for s in stages)]
        # What the optimiser updates (its grads are set to None after each step).
        self._params = trained = [p for g in ever for p in groups[g]]
        # The keyword only where it is True: torch before 2.4 has no fused CPU kernel.
        fused = {"fused": True} if fused_sgd_supported(trained, root) else {}
        self.opt = torch.optim.SGD(
            [
                {
                    "params": groups[g],
                    "lr": 0.0,
                    "weight_decay": float(weight_decay.get(g, 0.0)),
                    "group": g,
                }
                for g in ever
                if groups[g]
            ],
            lr=0.0,
            momentum=float(momentum),
            **fused,
        )
        self.phases = [
            Phase(phase_prefix if len(stages) == 1 else f"{phase_prefix}{i}")
            for i in range(len(stages))
        ]
        self.step = 0
        self.stage = -1
        self.lr_head: float | None = None
        self.diverged: dict | None = None

    def factor(self, step: int) -> float:
        """Cosine multiplier of the base LR at ``step`` (1 at 0, towards 0 at the end; no warm-up)."""
        return 0.5 * (1.0 + math.cos(math.pi * step / self.total))

    def _stage_at(self, step: int) -> int:
        for i, end in enumerate(self.ends):
            if step < end:
                return i
        return len(self.ends) - 1

    def set_modes(self) -> None:
        """Train mode, except BatchNorm of groups frozen in this stage (``bn="frozen"``)."""
        self.root.train()
        if self.bn != "frozen":
            return
        trainable = set(self.stages[max(self.stage, 0)].trainable)
        for g, modules in self.bn_modules.items():
            if g not in trainable:
                for m in modules:
                    m.eval()

    def _enter(self, stage: int) -> None:
        self.stage = stage
        trainable = set(self.stages[stage].trainable)
        for g, params in self.groups.items():
            for p in params:
                p.requires_grad_(g in trainable)
        self.set_modes()

    def _lr_of(self, group: str) -> float:
        return float(self.stages[self.stage].lr.get(group, 0.0))

    def run_epoch(
        self,
        batches: Iterable[tuple],
        forward: Callable[[tuple], tuple[torch.Tensor, torch.Tensor]],
        epoch: int,
    ) -> dict[str, Any]:
        """One pass over ``batches``: ``{"train_loss", "train_accuracy", "steps", "diverged"}``.

        ``forward(batch)`` returns ``(output, labels)`` as for :func:`evaluate`.

        ``train_loss``/``train_accuracy`` are running means over the epoch's
        examples (in train mode, as the model was while it learned). On the
        first non-finite loss the epoch stops and ``diverged`` is
        ``{"step", "epoch", "lr", "loss"}`` (step: 1-based index among this
        fitter's steps; lr: the head's LR at that step).
        """
        if self.stage < 0:
            self._enter(self._stage_at(self.step))
        self.set_modes()
        # On the CPU each step reads its loss (a host value already, no stall); on CUDA
        # the losses stay on the device and are checked in bulk (see _CUDA_CHECK_EVERY).
        on_host = not is_cuda(self.device)
        loss_sum: torch.Tensor | float = (
            0.0 if on_host else torch.zeros((), dtype=torch.float64, device=self.device)
        )
        # Predictions and labels kept per step, compared once per epoch (fewer ops a step).
        preds: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        count = 0
        pending: list[tuple[int, float | None, torch.Tensor]] = []
        for batch in batches:
            self._set_lrs()
            out = self._forward_backward(batch, forward, on_host)
            if on_host and not math.isfinite(out["value"]):
                self._diverge(self.step, epoch, self.lr_head, out["value"])
                return self._epoch_out(loss_sum, preds, labels, count)
            if not on_host:
                pending.append((self.step, self.lr_head, out["loss"]))
                if len(pending) >= _CUDA_CHECK_EVERY and self._flush(pending, epoch):
                    return self._epoch_out(loss_sum, preds, labels, count)
            self._update()
            n = int(out["y"].shape[0])
            if on_host:
                loss_sum += out["value"] * n  # float64 sums, as on the device
            else:
                loss_sum += out["loss"].double() * n
            preds.append(out["logits"].argmax(dim=1))
            labels.append(out["y"])
            count += n
        self._flush(pending, epoch)
        return self._epoch_out(loss_sum, preds, labels, count)

    def _set_lrs(self) -> None:
        """Enter the stage of the current step and set every group's scheduled LR."""
        stage = self._stage_at(self.step)
        if stage != self.stage:
            self._enter(stage)
        f = self.factor(self.step)
        for group in self.opt.param_groups:
            group["lr"] = self._lr_of(group["group"]) * f
        self.lr_head = self._lr_of("head") * f

    def _forward_backward(self, batch: tuple, forward, on_host: bool) -> dict[str, Any]:
        """One step's forward and backward (none through a non-finite loss on the host):
        ``{"loss", "logits", "y"}`` and, on the host, the loss ``"value"``. The stage's
        first step is the one whose FLOPs are counted."""
        out: dict[str, Any] = {}

        def step_fn() -> None:
            with autocast_context(self.device) if self.use_autocast else nullcontext():
                output, y = forward(batch)
            logits = logits_of(output)
            loss = F.cross_entropy(logits.float(), y)
            out.update(loss=loss.detach(), logits=logits.detach(), y=y)
            if on_host:
                out["value"] = float(out["loss"])
                if not math.isfinite(out["value"]):
                    return  # diverged: no backward through a non-finite graph
            loss.backward()

        phase = self.phases[self.stage]
        if phase.flops_per_step is None:
            phase.flops_per_step = count_train_step_flops(step_fn)
        else:
            step_fn()
        self.step += 1
        phase.steps += 1
        return out

    def _update(self) -> None:
        """The optimiser step (with the L2-SP pull added to the gradients), grads cleared."""
        if self.penalty is not None:
            alpha, pairs = self.penalty
            with torch.no_grad():
                for p, w0 in pairs:
                    if p.grad is not None:
                        p.grad.add_(p.detach() - w0, alpha=alpha)
        self.opt.step()
        for p in self._params:  # opt.zero_grad(set_to_none=True) without its per-call overhead
            p.grad = None

    def _flush(self, pending: list, epoch: int) -> bool:
        """Check the losses kept on the device; True when one was not finite (diverged)."""
        if not pending:
            return False
        values = torch.stack([loss for _, _, loss in pending]).float().cpu()
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            i = int(bad[0])
            step, lr, _ = pending[i]
            self._diverge(step, epoch, lr, float(values[i]))
        pending.clear()
        return self.diverged is not None

    def _diverge(self, step: int, epoch: int, lr: float | None, loss: float) -> None:
        self.diverged = {"step": step, "epoch": int(epoch), "lr": lr, "loss": str(loss)}

    def _epoch_out(
        self,
        loss_sum: torch.Tensor | float,
        preds: list[torch.Tensor],
        labels: list[torch.Tensor],
        count: int,
    ) -> dict[str, Any]:
        correct = int((torch.cat(preds) == torch.cat(labels)).sum()) if preds else 0
        return {
            "train_loss": float(loss_sum) / count if count else None,
            "train_accuracy": correct / count if count else None,
            "steps": self.step,
            "diverged": self.diverged,
        }
