"""A PyTorch Lightning callback that tracks forgetting: :class:`ForgettingCallback`.

Needs the optional extra (``pip install 'transfer-diagnose[lightning]'``); the
rest of the package never imports Lightning. Example::

    tracker = diagnose.ForgettingTracker(net, "demo:digits", max_forgetting=0.05)
    trainer = pl.Trainer(callbacks=[diagnose.ForgettingCallback(tracker, out_dir="track/")])
    trainer.fit(lit_module)          # lit_module holds net (e.g. as self.net)
    tracker.exceeded, tracker.history[-1]["agreement"]
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError as exc:
        raise ImportError(
            "diagnose.ForgettingCallback needs PyTorch Lightning: "
            "pip install 'transfer-diagnose[lightning]' (or pytorch-lightning)."
        ) from exc

from diagnose.workflows.tracking import ForgettingTracker

_log = logging.getLogger(__name__)

__all__ = ["ForgettingCallback"]


class ForgettingCallback(pl.Callback):
    """Measures forgetting with a :class:`ForgettingTracker` while a Lightning Trainer fits.

    Args:
        tracker: the tracker, built from the pretrained network and source data.
        every_n_steps: also measure every this many optimiser steps (None: only
            at validation epochs).
        on_validation: measure at the end of every validation epoch (not the
            sanity check).
        stop_on_budget: stop training (``trainer.should_stop``) once a
            measurement exceeds the tracker's ``max_forgetting``.
        log: log the scalars (source accuracy, agreement, forgetting, lowest CKA)
            through the trainer's logger, under ``forgetting/``.
        out_dir: write results.json and report.html there when training ends.
        module: the attribute of the LightningModule that holds the tracked
            network (None: the LightningModule itself when it has the tracked
            blocks, else the first submodule that has them all).
    """

    def __init__(
        self,
        tracker: ForgettingTracker,
        *,
        every_n_steps: int | None = None,
        on_validation: bool = True,
        stop_on_budget: bool = False,
        log: bool = True,
        out_dir: str | Path | None = None,
        module: str | None = None,
    ):
        if not isinstance(tracker, ForgettingTracker):
            raise TypeError(
                "The 'tracker' parameter of ForgettingCallback must be a "
                f"diagnose.ForgettingTracker. Got {type(tracker).__name__}."
            )
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool)
            or not isinstance(every_n_steps, int)
            or every_n_steps < 1
        ):
            raise ValueError(
                f"The 'every_n_steps' parameter must be a positive int or None. Got {every_n_steps!r}."
            )
        self.tracker = tracker
        self.every_n_steps = every_n_steps
        self.on_validation = bool(on_validation)
        self.stop_on_budget = bool(stop_on_budget)
        self.log = bool(log)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.module = module
        self._last_step: int | None = None

    def _network(self, pl_module: nn.Module) -> nn.Module:
        """The submodule of ``pl_module`` whose names are the tracked blocks' and head's."""
        wanted = [*self.tracker.blocks, self.tracker.loaded.head]
        if self.module is not None:
            return pl_module.get_submodule(self.module)
        for _, candidate in pl_module.named_modules():
            names = dict(candidate.named_modules())
            if all(w in names for w in wanted):
                return candidate
        raise ValueError(
            f"No submodule of {type(pl_module).__name__} has the tracked blocks "
            f"{self.tracker.blocks[:3]} and head {self.tracker.loaded.head!r}; name the "
            "attribute that holds the network with ForgettingCallback(module=...)."
        )

    def _measure(self, trainer, pl_module) -> None:
        step = int(trainer.global_step)
        if step == self._last_step:
            return  # a validation epoch right after a step measurement: one is enough
        self._last_step = step
        record = self.tracker.measure(self._network(pl_module), step=step)
        if self.log and trainer.logger is not None:
            ckas = [v for v in (record["cka"] or {}).values() if v is not None]
            scalars = {
                "forgetting/source_accuracy": record["source_accuracy"],
                "forgetting/agreement": record["agreement"],
                "forgetting/forgetting": record["forgetting"],
                "forgetting/cka_min": min(ckas) if ckas else None,
                "forgetting/diverged": 1.0 if record.get("diverged") else 0.0,
            }
            trainer.logger.log_metrics(
                {k: float(v) for k, v in scalars.items() if v is not None}, step=step
            )
        if self.log and record.get("diverged"):
            _log.warning("ForgettingCallback: the model diverged by step %d (non-finite source "
                         "outputs): total forgetting", step)  # fmt: skip
        if self.stop_on_budget and self.tracker.exceeded:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        del outputs, batch, batch_idx
        step = int(trainer.global_step)
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._measure(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        if self.on_validation and not trainer.sanity_checking:
            self._measure(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: D102
        del trainer, pl_module
        if self.out_dir is not None:
            self.tracker.save(self.out_dir)
