"""Where a comparison's units run: one after another here, or as Ray tasks on many GPUs/machines.

A *unit* is one strategy trained with one seed (:class:`Unit`). Every unit
of a comparison shares the same inputs (:class:`Job`: the pretrained model,
the prepared target tensors, the forgetting tracker, the training settings);
:func:`run_unit` trains one and never raises for a failing strategy (the
failure becomes that unit's record, so the others still run).

:func:`execute` runs the units and hands each outcome to ``on_done`` as soon
as it arrives, so the caller can write it to disk at once:

- ``"local"``: in this process, in order;
- ``"ray"``: one Ray task per unit requesting one GPU (CUDA device) or one
  CPU, the shared inputs put in the object store once. Ray is imported lazily
  and is optional (``pip install 'transfer-diagnose[ray]'``); without it the
  units run locally after one warning (:data:`RAY_MISSING`). A Ray instance
  is started (all local CPUs, no dashboard) unless one is already running or
  ``address`` names a cluster; only one started here is shut down. Ctrl-C or
  SIGTERM cancels the outstanding tasks and re-raises.

On the CPU a unit gives the same numbers through Ray as locally (tested to
the last bit): the task pins torch to the CPUs it was granted (1, so two
tasks on two CPUs do not oversubscribe), and the test's local run uses one
thread too so the check never hinges on a reduction order; on the demo
model one and two threads agree exactly anyway.

Example::

    execute([Unit("partial", 0)], job=job, executor="ray", on_done=write)
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from diagnose.core import (
    PARAMS,
    Arg,
    StrategyEntry,
    UsageError,
    atomic_write_bytes,
    atomic_write_dir,
    check_params,
    raise_if_interrupted,
    set_threads,
)
from diagnose.training.config import TrainConfig
from probes import free_device_memory, is_out_of_memory

__all__ = [
    "EXECUTORS",
    "Job",
    "Outcome",
    "RAY_MISSING",
    "RaySession",
    "Unit",
    "check_executor",
    "execute",
    "import_ray",
    "pin_worker_threads",
    "run_unit",
]

EXECUTORS = PARAMS["executor"].choices
RAY_MISSING = (
    "ray is not installed (pip install 'transfer-diagnose[ray]'); "
    "running the strategies locally, one after another."
)


class Unit(NamedTuple):
    """One strategy trained with one seed."""

    name: str
    seed: int


@dataclass
class Job:
    """What every unit of a comparison shares (the arguments of run_strategy but name and seed).

    ``checkpoint_dir``: where the FIRST seed's best state is saved as
    ``<strategy>.pt`` (None: no checkpoints); ``first_seed`` is that seed.
    """

    net: torch.nn.Module
    head: str
    blocks: list[str]
    data: Any  # diagnose.training.runner.TargetData
    tracker: Any  # diagnose.measure.forgetting.ForgettingMeter | None
    config: TrainConfig
    device: torch.device
    checkpoint_dir: Path | None = None
    first_seed: int = 0

    def checkpoint_path(self, unit: Unit) -> Path | None:
        if self.checkpoint_dir is None or unit.seed != self.first_seed:
            return None
        return self.checkpoint_dir / f"{unit.name}.pt"


Outcome = tuple[dict, list[str]]  # (the unit's record, the warnings it raised)


def run_unit(
    job: Job,
    unit: Unit,
    *,
    run: Callable[..., dict] | None = None,
    progress: bool = False,
    checkpoint_path: str | Path | None = None,
) -> Outcome:
    """Train ``unit``; on device out-of-memory retry at half the batch size; never raises
    for a failing strategy (its record is ``{"name", "status": "failed", "message"}``).

    ``run`` is :func:`diagnose.training.runner.run_strategy` unless given (the local path
    passes the caller's, so it can be replaced in tests). KeyboardInterrupt
    propagates.
    """
    if run is None:
        from diagnose.training.runner import run_strategy as run
    warnings: list[str] = []
    config = replace(job.config, seed=unit.seed)
    strategy, _, depth = unit.name.partition("@")
    if depth:  # a compare row "partial@k": partial with the last k blocks
        config = replace(config, unfreeze=list(job.blocks[-int(depth) :]))
    ckpt = None if checkpoint_path is None else str(checkpoint_path)
    while True:
        try:
            entry = run(
                strategy,
                job.net,
                head=job.head,
                blocks=job.blocks,
                data=job.data,
                tracker=job.tracker,
                config=config,
                device=job.device,
                progress=progress,
                checkpoint_path=ckpt,
            )
            if depth:
                entry = {**entry, "name": unit.name, "depth": int(depth)}
            return entry, warnings
        except Exception as exc:
            # A signal whose KeyboardInterrupt some library wrapped in its own error is
            # still a stop, not a failed strategy.
            raise_if_interrupted(exc)
            if not (is_out_of_memory(exc) and config.batch_size > 1):
                return _failed(unit, exc), warnings
        # Outside the except block, so the traceback no longer pins the failed
        # attempt's tensors and the cache can actually be freed.
        free_device_memory()
        half = config.batch_size // 2
        warnings.append(
            f"Strategy {unit.name} ran out of device memory at batch size "
            f"{config.batch_size}; retried at {half} (pass --batch-size {half} to start there)."
        )
        config = replace(config, batch_size=half)


def _failed(unit: Unit, exc: BaseException) -> dict:
    return StrategyEntry(
        name=unit.name, status="failed", message=f"{type(exc).__name__}: {exc}"
    ).to_dict()


def check_executor(executor: Any, ray_address: Any, where: str = "assess") -> None:
    """``ValueError`` naming ``executor`` or ``ray_address`` when they are not usable together."""
    check_params(where, executor=executor)
    if ray_address is not None and executor != "ray":
        raise UsageError(
            Arg("ray_address"), " needs ", Arg("executor", "ray"), "; add it or drop ",
            Arg("ray_address"), ".",
        )  # fmt: skip


def import_ray(executor: str, warnings: list[str], progress: bool = True):
    """The ``ray`` module when ``executor`` is "ray" and it imports; else None (after one warning)."""
    if executor != "ray":
        return None
    try:
        import ray
    except ImportError:
        warnings.append(RAY_MISSING)
        if progress:
            print(f"diagnose: {RAY_MISSING}", file=sys.stderr)
        return None
    return ray


# -- Ray --------------------------------------------------------------------------------------


def _portable(job: Job) -> Job:
    """``job`` with every tensor on the CPU: a worker's GPU numbering differs from ours."""
    net = job.net
    if any(p.device.type != "cpu" for p in net.parameters()):
        net = copy.deepcopy(net).cpu()
    tracker = job.tracker
    if tracker is not None:
        tracker = copy.copy(tracker)
        # The tracker's frozen original head lives on its device; the worker moves it back.
        tracker._head = copy.deepcopy(tracker._head).cpu()
        tracker.device = torch.device("cpu")
    return replace(job, net=net, tracker=tracker, device=torch.device("cpu"), checkpoint_dir=None)


def pin_worker_threads() -> None:
    """In a Ray task: torch's and BLAS threads = the CPUs Ray granted it (two tasks on two
    CPUs must not oversubscribe), set by the threads' one owner,
    :func:`diagnose.core.set_threads`, as the CLI sets them from ``--threads``."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    set_threads(max(1, int(cpus)), source="the CPUs Ray granted the task:")


def _ray_unit(job: Job, unit: Unit, cuda: bool, want_checkpoint: bool) -> tuple:
    """The Ray task: train one unit in a worker; returns (record, warnings, checkpoint files):
    ``{name relative to the checkpoint folder: bytes}`` (the state dict, and an adapter's
    files under ``<strategy>_adapter/``), or None."""
    pin_worker_threads()
    device = torch.device("cuda") if cuda else torch.device("cpu")  # our one visible GPU
    tracker = job.tracker
    if tracker is not None and cuda:
        tracker = copy.copy(tracker)
        tracker.device = device  # its head follows the features there on first use
    job = replace(job, device=device, tracker=tracker)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{unit.name}.pt" if want_checkpoint else None
        record, warnings = run_unit(job, unit, checkpoint_path=path)
        files = {
            str(f.relative_to(tmp)): f.read_bytes() for f in Path(tmp).rglob("*") if f.is_file()
        }
    return record, warnings, files or None


def _write_checkpoint_files(folder: Path, files: dict[str, bytes]) -> None:
    """A Ray task's checkpoint files under ``folder``: each file atomically, and each
    directory (an adapter) swapped in whole, never a mix of two runs' files."""
    dirs: dict[str, dict[str, bytes]] = {}
    for name, data in files.items():
        top, sep, rest = name.partition("/")
        if sep:
            dirs.setdefault(top, {})[rest] = data
        else:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / name, data)
    for top, inner in dirs.items():

        def write(tmp: Path, inner=inner) -> None:
            for rel, data in inner.items():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(data)

        atomic_write_dir(write, folder / top)


class RaySession:
    """``ray.init`` unless Ray already runs here; ``shutdown`` only what was started."""

    def __init__(self, ray, address: str | None, progress: bool = True):
        self.ray, self.started = ray, False
        if ray.is_initialized():
            return
        level = logging.WARNING if progress else logging.ERROR
        quiet = {"log_to_driver": False, "logging_level": level}
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        self.started = True
        if sigterm is not None:
            # ray.init replaces the SIGTERM handler (its core aborts the process), which
            # would lose the finished runs; ours stops cleanly and keeps them.
            signal.signal(signal.SIGTERM, sigterm)

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def _run_ray(ray, units, job, on_done, progress, address) -> None:
    cuda = job.device.type == "cuda"
    session = RaySession(ray, address, progress)
    pending: dict = {}
    try:
        if cuda and ray.cluster_resources().get("GPU", 0) < 1:
            raise UsageError(
                Arg("executor", "ray"), " with a CUDA ", Arg("device"), " needs GPUs in the Ray "
                "cluster, and it has none; pass ", Arg("device", "cpu"), " or start Ray on "
                "machines with GPUs.",
            )  # fmt: skip
        shared = ray.put(_portable(job))  # once: every task reads the same copy
        need = {"num_gpus": 1} if cuda else {"num_cpus": 1}
        task = ray.remote(_ray_unit).options(**need)
        for unit in units:
            want = job.checkpoint_path(unit) is not None
            pending[task.remote(shared, unit, cuda, want)] = unit
        bar = tqdm(total=len(units), desc="runs (ray)", unit="run", disable=not progress)
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                unit = pending.pop(ref)
                try:
                    record, warnings, blob = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the worker died or the task broke
                    cause = getattr(exc, "cause", None) or exc
                    record, warnings, blob = _failed(unit, cause), [], None
                if blob:
                    _write_checkpoint_files(job.checkpoint_path(unit).parent, blob)
                on_done(unit, record, warnings)
                bar.update(1)
                raise_if_interrupted()
        finally:
            bar.close()
    except BaseException:
        for ref in pending:  # Ctrl-C, SIGTERM or an error here: stop the rest
            ray.cancel(ref, force=True)
        raise
    finally:
        session.close()


def execute(
    units: list[Unit],
    *,
    job: Job,
    on_done: Callable[[Unit, dict, list[str]], None],
    ray: Any = None,
    run: Callable[..., dict] | None = None,
    progress: bool = True,
    address: str | None = None,
) -> None:
    """Run ``units``; call ``on_done(unit, record, warnings)`` as each finishes.

    ``ray`` is the imported module (from :func:`import_ray`) to run them as Ray
    tasks, None to run them here in order with ``run`` (default
    run_strategy). Exceptions raised by ``on_done`` and KeyboardInterrupt stop
    the run (outstanding Ray tasks are cancelled).
    """
    if ray is not None and units:
        _run_ray(ray, units, job, on_done, progress, address)
        return
    desc = "strategies" if len({u.seed for u in units}) <= 1 else "runs"
    for unit in tqdm(units, desc=desc, disable=not progress):
        path = job.checkpoint_path(unit)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        record, warnings = run_unit(job, unit, run=run, progress=progress, checkpoint_path=path)
        on_done(unit, record, warnings)
        raise_if_interrupted()  # a signal that something swallowed: the unit is saved, stop
