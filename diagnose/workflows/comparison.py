"""``diagnose compare``: run the fine-tuning strategies under one budget.

Each strategy gets the same target data, epochs, schedule family and seed;
each is tracked for target accuracy, forgetting on a fixed source batch and
compute cost. Nothing is lost: every finished strategy is written to the
output directory atomically as it ends (``strategies/<name>.json``, and
results.json and report.html re-rendered), ``--resume`` runs only the
missing ones, and an exception in one strategy marks it "failed" while the
others still run.

With ``seeds`` > 1 each strategy runs once per training seed and its entry
reports means with a spread (:mod:`diagnose.training.seeds`); with ``executor="ray"``
the (strategy, seed) units run as Ray tasks, one GPU or CPU each
(:mod:`diagnose.training.executor`). Both keep the guarantees above per unit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import probes
from diagnose.core import (
    Arg,
    RunResult,
    StrategyEntry,
    UsageError,
    atomic_write_text,
    environment,
    jsonable,
    resolve_device,
    write_results,
)
from diagnose.decide import learning_forgetting_front, select_strategy
from diagnose.models import choose_layout, resolve_preprocessing
from diagnose.report import check_out_dir, write_outputs
from diagnose.training import (
    Job,
    TrainConfig,
    Unit,
    execute,
    finished,
    import_ray,
    read_previous,
    resumed_text,
    run_strategy,
    strategy_entries,
)
from diagnose.workflows._compare_inputs import assessment_prediction, base_results, target_data
from diagnose.workflows.compare_args import (
    check_compare_args,
    lora_settings,
    parse_strategies,
    resolve_unfreeze,
)
from diagnose.workflows.startup import forgetting_meter, model_and_data

__all__ = [
    "CompareResult",
    "DEFAULT_HEAD_LR",
    "compare",
]

DEFAULT_HEAD_LR = 1e-2
_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_targets", "adapted_blocks")


class CompareResult(RunResult):
    """A comparison: ``to_dict()`` is results.json; paths are set when ``out`` was given."""

    @property
    def strategies(self) -> list[dict]:
        return self.results["strategies"]


def _checked(runner, device: str, out) -> torch.device:
    """The device, after the checks that fail before anything loads or trains."""
    if runner is not None and not callable(runner):
        raise TypeError(
            "The 'runner' parameter of compare must be a function like "
            f"diagnose.training.run_strategy, or None. Got {type(runner).__name__} instead."
        )
    dev = resolve_device(device)
    if out is not None:
        check_out_dir(out)  # fail before hours of training, not after
    return dev


def _train_config(base: dict, lr, epochs, batch_size, unfreeze, bn, seed, lora: dict):
    """``(config, where its head LR came from)``: ``lr``, else the assessment's range test,
    else :data:`DEFAULT_HEAD_LR`."""
    suggested = (base.get("lr_find") or {}).get("suggested_lr")
    head_lr = lr if lr is not None else (suggested or DEFAULT_HEAD_LR)
    source = "--lr" if lr is not None else ("LR range test" if suggested else "default")
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        head_lr=float(head_lr),
        unfreeze=unfreeze,
        bn=bn,
        seed=seed,
        **lora,
    )
    return config, source


def _with_layout(config: TrainConfig, loaded, data, device):
    """``(config, layout)``: the layout every strategy of the run trains in, decided once
    here (local and Ray units alike), carried by the config."""
    layout = choose_layout(loaded.model, data.x_train[: config.batch_size], device, training=True)
    return dataclasses.replace(config, memory_format=layout.name), layout


def _fingerprint(
    model: str, src, tgt, config: TrainConfig, extra: dict, seeds: int, lora: bool
) -> dict:
    """What must match for ``--resume`` to reuse a run's finished units."""
    # "seeds" is absent for one seed, so single-seed runs of earlier versions stay resumable.
    extra = {**extra, **({"seeds": seeds} if seeds > 1 else {})}
    # The layout changes float rounding only, and is measured again on --resume.
    # LoRA's settings count only where LoRA runs, so other runs (and runs from before
    # LoRA) resume whatever they are.
    train = {
        k: v
        for k, v in config.to_dict().items()
        if k != "memory_format" and (lora or k not in _LORA_KEYS)
    }
    source = getattr(src, "name", None)
    return jsonable({"model": model, "source": source, "target": tgt.name, **train, **extra})


def compare(
    model: Any,
    source: Any,
    target: Any,
    *,
    weights: str | None = None,
    trust_checkpoint: bool = False,
    head: str | None = None,
    layers: str | list[str] = "auto",
    strategies: str | list[str] = "all",
    epochs: int = 3,
    lr: float | None = None,
    unfreeze: list[str] | int | None = None,
    bn: str = "frozen",
    max_forgetting: float | None = None,
    image_size: int | None = None,
    normalize: Any = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 64,
    max_samples: int | None = None,
    source_eval_samples: int = 128,
    out: str | Path | None = None,
    resume: bool = False,
    save_checkpoints: bool = False,
    with_assessment: bool = True,
    progress: bool = True,
    executor: str = "local",
    ray_address: str | None = None,
    seeds: int = 1,
    trial_budget: float = 0.0,
    pool: str = "mean",
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    lora_targets: str | list[str] | None = None,
    runner: Callable[..., dict] | None = None,
) -> CompareResult:
    """Fine-tune with each strategy under one budget and measure accuracy, forgetting and cost.

    Every strategy gets the same target data, epochs, schedule family and seed,
    and is tracked for target accuracy, forgetting on a fixed source batch and
    compute cost; the measured best is selected (:func:`diagnose.decide.select_strategy`).
    Every finished unit is written at once, so an interrupted run loses nothing.

    Args:
        model: a spec, an ``nn.Module`` or a ``LoadedModel`` (as :func:`diagnose.assess`).
        source: the source data, for forgetting (None: forgetting is not measured).
        target: the labelled target data.
        weights: a state dict file for a spec's architecture, or ``"random"``.
        trust_checkpoint: allow pickled checkpoint files you trust.
        head: qualified module name of the classification head (None: found).
        layers: block names (parameter groups, CKA), or ``"auto"``.
        strategies: ``"all"`` or names from :data:`diagnose.STRATEGIES`.
        epochs: training epochs per strategy (every strategy the same).
        lr: the head LR (None: the assessment's LR range test, else 1e-2);
            backbone LRs follow from it per strategy.
        unfreeze: for ``partial``: an int k (the last k blocks), block names, or
            several depths ``[1, 2, 4]`` (one row ``partial@k`` each); None takes
            the assessment's recommendation.
        bn: BatchNorm statistics of trained blocks: ``"frozen"`` or ``"train"``.
        max_forgetting: the forgetting budget of the selection, a fraction in [0, 1].
        image_size: resize images to this many pixels square.
        normalize: ``"MEAN,STD"``, ``"none"``, or None for the model's own.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        seed: the data split and the first training seed.
        batch_size: images per step.
        max_samples: at most this many target images.
        source_eval_samples: held-out source images forgetting is measured on.
        out: write results.json, report.html and strategies/*.json here.
        resume: continue the run in ``out``, training only the missing units.
        save_checkpoints: keep each fine-tuned state dict under ``out/checkpoints``.
        with_assessment: run :func:`diagnose.assess` first (its LR suggestion,
            its prediction checked against the measured best).
        progress: show progress bars.
        executor: ``"local"`` runs the (strategy, seed) units here one after
            another; ``"ray"`` runs each as a Ray task with one GPU or one CPU
            (falls back to local, with a warning, without Ray).
        ray_address: the Ray cluster to join (with ``executor="ray"``).
        seeds: training seeds per strategy (``seed`` .. ``seed + seeds - 1``, same
            split); with more than one each entry holds means, ``per_seed``
            records and their ``spread``, and only the first seed's checkpoint
            is kept.
        trial_budget: the assessment's trial race budget (see :func:`diagnose.assess`);
            0 by default, since the comparison itself trains every strategy.
        pool: token pooling of transformer blocks, ``"mean"`` or ``"cls"``.
        lora_rank: the rank of ``lora``'s update (``unfreeze`` as an int k or block
            names puts LoRA on those blocks only; by default it goes on every block).
        lora_alpha: LoRA's scale numerator (the update is ``B A * alpha / rank``).
        lora_targets: names or name suffixes of the layers LoRA adapts (comma-separated
            or a list); None: every ``nn.Linear`` and 2-D ``nn.Conv2d`` of the blocks.
        runner: the function that trains one (strategy, seed) unit and returns its
            results entry, called with :func:`diagnose.training.run_strategy`'s
            arguments (None: that function). A wrapper can time, log or fail units
            (the tests inject faults with it); with ``executor="ray"`` it must pickle.

    Returns:
        A :class:`CompareResult`: ``strategies`` (one entry per strategy) and
        ``results["comparison_recommendation"]``.

    Example::

        res = compare("demo", "demo:digits", "demo:digits-noise", epochs=3, out="cmp/")
        [(s["name"], s["target"]["test_accuracy"]) for s in res.strategies]
    """
    t_start = time.perf_counter()
    names = parse_strategies(strategies, skipped := [])
    check_compare_args(
        epochs=epochs, lr=lr, bn=bn, max_forgetting=max_forgetting, resume=resume, out=out,
        executor=executor, ray_address=ray_address, seeds=seeds, batch_size=batch_size,
        max_samples=max_samples, image_size=image_size, pool=pool,
    )  # fmt: skip
    dev = _checked(runner, device, out)
    loaded, src, tgt = model_and_data(
        "compare", model, source, target, weights=weights, trust_checkpoint=trust_checkpoint,
        head=head, progress=progress, image_size=image_size,
    )  # fmt: skip
    if tgt is None or tgt.labels is None:
        raise UsageError("compare needs labelled ", Arg("target"), " data.")
    out_dir = Path(out) if out is not None else None
    previous = read_previous(out_dir) if resume else None
    blocks = probes.discover_layers(loaded.model) if layers == "auto" else list(layers)
    lora = lora_settings(unfreeze, blocks, lora_rank, lora_alpha, lora_targets, names=names,
                         loaded=loaded, bn=bn, warnings=skipped)  # fmt: skip
    base = base_results(
        previous, with_assessment, loaded, src, tgt, layers=layers, image_size=image_size,
        normalize=normalize, device=device, seed=seed, batch_size=batch_size,
        max_samples=max_samples, max_forgetting=max_forgetting, progress=progress,
        trial_budget=trial_budget, pool=pool,
    )  # fmt: skip
    warnings = [*base.get("warnings", []), *skipped]
    domains = [d for d in (src, tgt) if d is not None]
    prep = resolve_preprocessing(loaded, domains, image_size, normalize)
    names, unfreeze = resolve_unfreeze(unfreeze, names, blocks, assessment_prediction(base))
    config, head_lr_from = _train_config(base, lr, epochs, batch_size, unfreeze, bn, seed, lora)
    keys = {"max_samples": max_samples, "image_size": image_size, "normalize": str(normalize), "blocks": blocks}  # fmt: skip
    fingerprint = _fingerprint(loaded.name, src, tgt, config, keys, seeds, "lora" in names)
    seed_list = [seed + i for i in range(seeds)]
    done = finished(previous, fingerprint, out_dir / "results.json", seed_list) if previous else {}
    data, _, _ = target_data(tgt, prep, max_samples=max_samples, seed=seed, warnings=warnings)
    config, layout = _with_layout(config, loaded, data, dev)
    tracker = forgetting_meter(
        src, loaded, prep, blocks, n=source_eval_samples, seed=seed, device=dev, pool=pool,
        warnings=warnings,
    )  # fmt: skip
    ray = import_ray(executor, warnings, progress)
    records = {k: v for k, v in done.items() if k[0] in names}
    run_config = {
        "strategies": names, "fingerprint": fingerprint, "train": config.to_dict(),
        "head_lr_from": head_lr_from,
        "source_eval_samples": int(len(tracker.source_x)) if tracker is not None else 0,
        "max_forgetting": max_forgetting, "base_warnings": len(base.get("warnings", [])), "seeds": seed_list,
        "executor": "ray" if ray is not None else "local", **data.sizes(),
        "memory_format": layout.to_dict(),
    }  # fmt: skip
    results = {**base, "kind": "compare", "compare_config": run_config, "warnings": warnings}
    writer = _Writer(results, records, names, seed_list, out_dir, (dev, seed, t_start), tracker)
    job = Job(
        net=loaded.model, head=loaded.head, blocks=blocks, data=data, tracker=tracker,
        config=config, device=dev, first_seed=seed,
        checkpoint_dir=out_dir / "checkpoints" if save_checkpoints and out_dir else None,
    )  # fmt: skip
    todo = [Unit(n, s) for n in names for s in seed_list if (n, s) not in records]
    writer.run(todo, job, ray, runner or run_strategy, progress, ray_address)
    return CompareResult.of(results, out_dir)


# Redrawing every plot after every unit would cost more than short units take to
# train, so between units the report is redrawn only once the time since its last
# drawing is this many times what that drawing took: a small share of any run.
# results.json is written after every unit, and the report always at the end.
_REDRAW_AFTER = 10


class _Writer:
    """Writes a comparison as its units finish: ``strategies/<name>.json`` and
    results.json atomically, and report.html with the selection so far when due."""

    def __init__(self, results, records, names, seed_list, out_dir, run, tracker):
        self.results, self.records, self.names, self.seed_list = results, records, names, seed_list
        self.out_dir, (self.dev, self.seed, self.t_start), self.tracker = out_dir, run, tracker
        if records:
            results["warnings"].append(resumed_text(records, len(seed_list)))
        if out_dir is not None:
            (out_dir / "strategies").mkdir(parents=True, exist_ok=True)
        self.prediction = assessment_prediction(results)  # what the selection checks
        self.drawn_at: float | None = None  # when report.html was last written
        self.draw_s = 0.0  # and what writing it took

    def run(self, todo: list[Unit], job: Job, ray, run, progress: bool, address) -> None:
        """Train ``todo`` (:func:`diagnose.training.execute`), writing each unit as it ends."""
        try:
            execute(todo, job=job, on_done=self.on_done, ray=ray, run=run, progress=progress,
                    address=address)  # fmt: skip
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM, possibly in the middle of writing: write once more so
            # results.json and report.html hold every finished unit, then stop.
            self.finish(partial=True)
            raise
        self.finish(partial=False)

    def finish(self, partial: bool, redraw: bool = True) -> None:
        results = self.results
        entries = [
            StrategyEntry.from_dict(e)
            for e in strategy_entries(self.names, self.seed_list, self.records)
        ]
        results["strategies"] = [e.to_dict() for e in entries]
        results["comparison_recommendation"] = select_strategy(
            entries,
            max_forgetting=results["compare_config"]["max_forgetting"],
            assessment=self.prediction,
        ).to_dict()
        results["front"] = [p.to_dict() for p in learning_forgetting_front(entries)]
        env = environment(str(self.dev), self.seed)
        env["wall_s"] = time.perf_counter() - self.t_start
        env["partial"] = partial
        if self.tracker is not None:  # the layout of the forgetting passes, and why
            env["forgetting_layout"] = self.tracker.layout.describe()
        results["environment"] = env
        if self.out_dir is None:
            return
        now = time.perf_counter()
        if redraw or self.drawn_at is None or now - self.drawn_at >= _REDRAW_AFTER * self.draw_s:
            write_outputs(results, self.out_dir)
            self.drawn_at = time.perf_counter()
            self.draw_s = self.drawn_at - now
        else:
            write_results(results, self.out_dir / "results.json")

    def on_done(self, unit: Unit, record: dict, unit_warnings: list[str]) -> None:
        warnings = self.results["warnings"]
        warnings.extend(unit_warnings)
        which = unit.name if len(self.seed_list) == 1 else f"{unit.name} (seed {unit.seed})"
        if record.get("status") == "failed":
            warnings.append(f"Strategy {which} failed: {record.get('message')}")
        self.records[unit] = jsonable(record, warnings, which)
        if self.out_dir is not None:
            entry = strategy_entries([unit.name], self.seed_list, self.records)[0]
            text = json.dumps(entry, indent=2) + "\n"
            atomic_write_text(self.out_dir / "strategies" / f"{unit.name}.json", text)
        self.finish(partial=True, redraw=False)
