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

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import probes
from diagnose.core import (
    SCHEMA_VERSION,
    RunResult,
    atomic_write_text,
    environment,
    jsonable,
    resolve_device,
)
from diagnose.data import drop_positions, materialize_readable, restricted_splits, subsample
from diagnose.decide import select_strategy
from diagnose.measure import ForgettingMeter
from diagnose.models import resolve_preprocessing
from diagnose.report import check_out_dir, write_outputs
from diagnose.training import (
    RUN_KEYS,
    Job,
    TargetData,
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
from diagnose.workflows.assessment import assess
from diagnose.workflows.compare_args import check_compare_args, parse_strategies, resolve_unfreeze
from diagnose.workflows.startup import model_and_data, source_eval_set

__all__ = [
    "CompareResult",
    "DEFAULT_HEAD_LR",
    "compare",
]

DEFAULT_HEAD_LR = 1e-2


class CompareResult(RunResult):
    """A comparison: ``to_dict()`` is results.json; paths are set when ``out`` was given."""

    @property
    def strategies(self) -> list[dict]:
        return self.results["strategies"]


def _fingerprint(
    model: str, source: str | None, target: str, config: TrainConfig, extra: dict
) -> dict:
    return jsonable(
        {"model": model, "source": source, "target": target, **config.to_dict(), **extra}
    )


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
    names = parse_strategies(strategies)
    check_compare_args(
        epochs=epochs,
        lr=lr,
        bn=bn,
        max_forgetting=max_forgetting,
        resume=resume,
        out=out,
        executor=executor,
        ray_address=ray_address,
        seeds=seeds,
    )
    if runner is not None and not callable(runner):
        raise TypeError(
            "The 'runner' parameter of compare must be a function like "
            f"diagnose.training.run_strategy, or None. Got {type(runner).__name__} instead."
        )
    dev = resolve_device(device)
    if out is not None:
        check_out_dir(out)  # fail before hours of training, not after
    loaded, src, tgt = model_and_data(
        "compare",
        model,
        source,
        target,
        weights=weights,
        trust_checkpoint=trust_checkpoint,
        head=head,
        progress=progress,
        image_size=image_size,
    )
    if tgt is None or tgt.labels is None:
        raise ValueError("compare needs labelled 'target' data.")
    out_dir = Path(out) if out is not None else None

    previous = read_previous(out_dir) if resume else None
    if previous is not None:
        # Resuming: the assessment (and its LR suggestion) is already on disk.
        base = {k: v for k, v in previous.items() if k not in RUN_KEYS}
        n_base = previous.get("compare_config", {}).get("base_warnings", 0)
        base["warnings"] = previous.get("warnings", [])[:n_base]
    elif with_assessment:
        base = assess(
            loaded,
            src,
            tgt,
            layers=layers,
            image_size=image_size,
            normalize=normalize,
            device=device,
            seed=seed,
            batch_size=batch_size,
            max_samples=max_samples,
            max_forgetting=max_forgetting,
            progress=progress,
            trial_budget=trial_budget,
            pool=pool,
        ).to_dict()
    else:
        base = {"schema": SCHEMA_VERSION, "model": loaded.to_dict(), "warnings": [], "layers": []}
    warnings: list[str] = list(base.get("warnings", []))
    n_base_warnings = len(warnings)
    prep = resolve_preprocessing(
        loaded, [d for d in (src, tgt) if d is not None], image_size, normalize
    )
    net = loaded.model
    blocks = probes.discover_layers(net) if layers == "auto" else list(layers)

    suggested = (base.get("lr_find") or {}).get("suggested_lr")
    head_lr = lr if lr is not None else (suggested or DEFAULT_HEAD_LR)
    names, unfreeze = resolve_unfreeze(unfreeze, names, blocks, base.get("recommendation"))
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        head_lr=float(head_lr),
        unfreeze=unfreeze,
        bn=bn,
        seed=seed,
    )
    fingerprint = _fingerprint(
        loaded.name,
        getattr(src, "name", None),
        tgt.name,
        config,
        {
            "max_samples": max_samples,
            "image_size": image_size,
            "normalize": str(normalize),
            "blocks": blocks,
            # Absent for one seed, so single-seed runs of earlier versions stay resumable.
            **({"seeds": seeds} if seeds > 1 else {}),
        },
    )

    seed_list = [seed + i for i in range(seeds)]
    done = finished(previous, fingerprint, out_dir / "results.json", seed_list) if previous else {}
    used = subsample(tgt, max_samples, seed)
    split = restricted_splits(tgt, used, seed)
    # An image that fails to decode is left out of every split, with a warning.
    x, y, skipped = materialize_readable(tgt, used, prep, warnings)
    used, split = drop_positions(used, split, skipped)
    data = TargetData(
        x_train=x[split["train"]],
        y_train=y[split["train"]],
        x_val=x[split["val"]],
        y_val=y[split["val"]],
        x_test=x[split["test"]],
        y_test=y[split["test"]],
        num_classes=len(tgt.classes or []) or int(y.max()) + 1,
    )
    del x, y  # the splits are copies: do not hold the images twice while training
    tracker = None
    if src is not None:
        sx, sy = source_eval_set(
            src, loaded, prep, n=source_eval_samples, seed=seed, warnings=warnings
        )
        tracker = ForgettingMeter(
            net,
            head=loaded.head,
            blocks=blocks,
            source_x=sx,
            source_y=sy,
            device=dev,
            token_pool=pool,
        )
    else:
        warnings.append("No source data: forgetting cannot be measured.")

    ray = import_ray(executor, warnings, progress)
    records = {k: v for k, v in done.items() if k[0] in names}
    results = {
        **base,
        "kind": "compare",
        "compare_config": {
            "strategies": names,
            "fingerprint": fingerprint,
            "train": config.to_dict(),
            "head_lr_from": "--lr"
            if lr is not None
            else ("LR range test" if suggested else "default"),
            "source_eval_samples": int(len(tracker.source_x)) if tracker is not None else 0,
            "max_forgetting": max_forgetting,
            "base_warnings": n_base_warnings,
            "seeds": seed_list,
            "executor": "ray" if ray is not None else "local",
            # Images per split: every accuracy is a count over these.
            "n_train": int(len(data.y_train)),
            "n_val": int(len(data.y_val)),
            "n_test": int(len(data.y_test)),
        },
        "strategies": strategy_entries(names, seed_list, records),
        "warnings": warnings,
    }
    if records:
        warnings.append(resumed_text(records, seeds))

    def finish(partial: bool) -> None:
        results["strategies"] = strategy_entries(names, seed_list, records)
        results["comparison_recommendation"] = select_strategy(
            results["strategies"],
            max_forgetting=max_forgetting,
            assessment=base.get("recommendation"),
        )
        env = environment(str(dev), seed)
        env["wall_s"] = time.perf_counter() - t_start
        env["partial"] = partial
        if tracker is not None:  # the layout of the forgetting passes, and why
            env["forgetting_layout"] = tracker.layout.describe()
        results["environment"] = env
        if out_dir is not None:
            write_outputs(results, out_dir)

    def on_done(unit: Unit, record: dict, unit_warnings: list[str]) -> None:
        warnings.extend(unit_warnings)
        which = unit.name if seeds == 1 else f"{unit.name} (seed {unit.seed})"
        if record.get("status") == "failed":
            warnings.append(f"Strategy {which} failed: {record.get('message')}")
        records[unit] = jsonable(record, warnings, which)
        if out_dir is not None:
            entry = strategy_entries([unit.name], seed_list, records)[0]
            text = json.dumps(entry, indent=2) + "\n"
            atomic_write_text(out_dir / "strategies" / f"{unit.name}.json", text)
        finish(partial=True)

    todo = [Unit(n, s) for n in names for s in seed_list if (n, s) not in records]
    if out_dir is not None:
        (out_dir / "strategies").mkdir(parents=True, exist_ok=True)
    job = Job(
        net=net,
        head=loaded.head,
        blocks=blocks,
        data=data,
        tracker=tracker,
        config=config,
        device=dev,
        checkpoint_dir=out_dir / "checkpoints" if save_checkpoints and out_dir else None,
        first_seed=seed,
    )
    try:
        execute(
            todo,
            job=job,
            on_done=on_done,
            ray=ray,
            run=run_strategy if runner is None else runner,
            progress=progress,
            address=ray_address,
        )
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM, possibly in the middle of writing: write once more so
        # results.json and report.html hold every finished unit, then stop.
        finish(partial=True)
        raise
    finish(partial=False)
    result = CompareResult(results)
    if out_dir is not None:
        result.results_path, result.report_path = out_dir / "results.json", out_dir / "report.html"
    return result
