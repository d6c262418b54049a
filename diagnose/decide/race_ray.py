"""The race's trials as Ray tasks: one task per candidate and fold, one GPU or CPU each.

``diagnose assess --executor ray`` spreads each rung of the race the way
``diagnose compare`` spreads its strategies (:mod:`diagnose.training.executor`):
the pretrained model and the fold tensors are put in the object store once,
every trial of a rung is submitted at once, and the results are recorded in
candidate order, exactly as the local race records them. The cost accounting
is the local one: a head capture or a frozen-prefix cache that a task
recomputed is charged once per fold (:meth:`RaceContext.record`), and a
first-rung trial that the calibrated budget would not have started is
discarded, so at the same seed the race keeps the same candidates, and gives
the same scores up to float summation order, as the local run.

Example::

    ctx.remote = RayTrials(ray, ctx, address=None)
    try:
        trials = ...  # run the race with ctx
    finally:
        ctx.remote.close()
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from diagnose.core import Arg, UsageError
from diagnose.decide.race_trials import Arm, RaceContext
from diagnose.training import RaySession, pin_worker_threads

__all__ = ["RayTrials"]


def _ray_trial(shared: dict, cand, fold: int, epochs: int, cuda: bool) -> dict:
    """The Ray task: one trial in a worker (its own reuse cache, its granted CPUs)."""
    pin_worker_threads()
    ctx = RaceContext(
        shared["fold_data"],
        shared["folds"],
        shared["model"],
        shared["head"],
        shared["blocks"],
        shared["batch_size"],
        shared["seed"],
        torch.device("cuda") if cuda else torch.device("cpu"),
        memory_format=shared["memory_format"],
        meter=shared["meter"],
        measure_at=shared["measure_at"],
    )
    return ctx.trial(cand, fold, epochs)


class RayTrials:
    """Runs batches of a race's trials as Ray tasks (``ray`` is the imported module).

    Starts Ray unless it already runs here (or joins ``address``); :meth:`close`
    shuts down only what it started.
    """

    def __init__(self, ray: Any, ctx: RaceContext, address: str | None, progress: bool = True):
        self.ray = ray
        self.session = RaySession(ray, address, progress)
        self.cuda = ctx.device.type == "cuda"
        if self.cuda and ray.cluster_resources().get("GPU", 0) < 1:
            self.close()
            raise UsageError(
                Arg("executor", "ray"), " with a CUDA ", Arg("device"), " needs GPUs in the Ray "
                "cluster, and it has none; pass ", Arg("device", "cpu"), " or start Ray on "
                "machines with GPUs.",
            )  # fmt: skip
        model = ctx.model
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = copy.deepcopy(model).cpu()  # a worker's GPU numbering differs from ours
        self.shared = ray.put(
            {
                "fold_data": ctx.fold_data,
                "folds": ctx.folds,
                "model": model,
                "head": ctx.head,
                "blocks": ctx.blocks,
                "batch_size": ctx.batch_size,
                "seed": ctx.seed,
                "memory_format": ctx.memory_format,
                "meter": ctx.meter,
                "measure_at": ctx.measure_at,
            }
        )
        need = {"num_gpus": 1} if self.cuda else {"num_cpus": 1}
        self.task = ray.remote(_ray_trial).options(**need)

    def run(self, arms: list[Arm], epochs: int, n_folds: int, bar) -> dict:
        """``{arm.index: [one result per fold] or the exception that failed it}``."""
        refs = {
            ref: (a, fold)
            for a in arms
            for fold in range(n_folds)
            for ref in [self.task.remote(self.shared, a.cand, fold, epochs, self.cuda)]
        }
        got: dict[tuple[int, int], Any] = {}
        pending = list(refs)
        try:
            while pending:
                (ref,), pending = self.ray.wait(pending, num_returns=1)
                a, fold = refs[ref]
                try:
                    got[(a.index, fold)] = self.ray.get(ref)
                except self.ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None) or exc
                    if not isinstance(cause, Exception):  # an interrupt, not a failure
                        raise cause from exc
                    got[(a.index, fold)] = cause
                bar.update(1)
        except BaseException:
            for ref in pending:  # Ctrl-C, SIGTERM or an error: stop the rest
                self.ray.cancel(ref, force=True)
            raise
        out: dict[int, Any] = {}
        for a in arms:
            results = [got[(a.index, fold)] for fold in range(n_folds)]
            failed = next((r for r in results if isinstance(r, Exception)), None)
            out[a.index] = failed if failed is not None else results
        return out

    def close(self) -> None:
        self.session.close()
