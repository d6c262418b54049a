"""``diagnose compare``: run the fine-tuning strategies under one budget.

Each strategy gets the same target data, epochs, schedule family and seed;
each is tracked for target accuracy, forgetting on a fixed source batch and
compute cost. Nothing is lost: every finished strategy is written to the
output directory atomically as it ends (``strategies/<name>.json``, and
results.json and report.html re-rendered), ``--resume`` runs only the
missing ones, and an exception in one strategy marks it "failed" while the
others still run.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import probes
from diagnose._evalset import materialize, source_eval_set
from diagnose._prep import resolve_device, resolve_preprocessing
from diagnose.assess import _as_domain, _as_loaded, _restricted_splits, _subsample, assess
from diagnose.forgetting import ForgettingTracker
from diagnose.report import check_out_dir
from diagnose.results import (
    SCHEMA_VERSION,
    RunResult,
    atomic_write_text,
    environment,
    jsonable,
    load_results,
)
from diagnose.select import select_strategy
from diagnose.strategies import STRATEGY_NAMES, TrainConfig
from diagnose.train import TargetData, run_strategy

__all__ = ["CompareResult", "compare", "parse_strategies"]

DEFAULT_HEAD_LR = 1e-2


class CompareResult(RunResult):
    """A comparison: ``to_dict()`` is results.json; paths are set when ``out`` was given."""

    @property
    def strategies(self) -> list[dict]:
        return self.results["strategies"]


def parse_strategies(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """``all`` or a comma-separated subset of the strategy names, in canonical order."""
    names = list(STRATEGY_NAMES) if value == "all" else value
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGY_NAMES]
    if unknown or not names:
        raise ValueError(
            f"--strategies must be 'all' or names from {', '.join(STRATEGY_NAMES)}. "
            f"Got {', '.join(unknown) or 'nothing'}."
        )
    return [n for n in STRATEGY_NAMES if n in names]


def _fingerprint(
    model: str, source: str | None, target: str, config: TrainConfig, extra: dict
) -> dict:
    return jsonable(
        {"model": model, "source": source, "target": target, **config.to_dict(), **extra}
    )


def _write(results: dict, out: Path) -> tuple[Path, Path]:
    from diagnose.report import write_outputs

    return write_outputs(results, out)


# Keys a comparison adds to the assessment it starts from; the rest is the assessment.
_RUN_KEYS = ("kind", "compare_config", "strategies", "comparison_recommendation", "environment")


def _read_previous(out: Path) -> dict | None:
    """The comparison in ``out`` that ``--resume`` continues, or None when there is none."""
    path = out / "results.json"
    if not path.exists():
        return None
    previous = load_results(path)
    if previous.get("kind") != "compare":
        raise ValueError(f"--resume: {path} is not a comparison (kind {previous.get('kind')!r}).")
    return previous


def _finished(previous: dict, fingerprint: dict, path: Path) -> list[dict]:
    if previous.get("compare_config", {}).get("fingerprint") != fingerprint:
        raise ValueError(
            f"--resume: {path} was written with different settings (model, data, epochs, LR or "
            "seed); use another --out or drop --resume to start afresh."
        )
    return [s for s in previous.get("strategies", []) if s.get("status") in ("ok", "diverged")]


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _run_with_oom_retry(
    name, net, head, blocks, data, tracker, config, dev, progress, ckpt, warnings
):
    """Run one strategy; on device out-of-memory retry it with half the batch size."""
    while True:
        try:
            return run_strategy(
                name,
                net,
                head=head,
                blocks=blocks,
                data=data,
                tracker=tracker,
                config=config,
                device=dev,
                progress=progress,
                checkpoint_path=ckpt,
            )
        except Exception as exc:
            if not _is_out_of_memory(exc) or config.batch_size <= 1:
                raise
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            half = config.batch_size // 2
            warnings.append(
                f"Strategy {name} ran out of device memory at batch size {config.batch_size}; "
                f"retried at {half} (pass --batch-size {half} to start there)."
            )
            config = replace(config, batch_size=half)


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
) -> CompareResult:
    """Fine-tune with each strategy and measure accuracy, forgetting and cost.

    Example::

        res = compare("demo", "demo:digits", "demo:digits-noise", epochs=3, out="cmp/")
        [(s["name"], s["target"]["test_accuracy"]) for s in res.strategies]
    """
    t_start = time.perf_counter()
    names = parse_strategies(strategies)
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1. Got {epochs}.")
    if lr is not None and not (lr > 0 and np.isfinite(lr)):
        raise ValueError(f"--lr must be a positive number. Got {lr}.")
    if bn not in ("frozen", "train"):
        raise ValueError(f"--bn must be 'frozen' or 'train'. Got {bn!r}.")
    if max_forgetting is not None and not 0 <= max_forgetting <= 1:
        raise ValueError(f"--max-forgetting must be between 0 and 1. Got {max_forgetting}.")
    if resume and out is None:
        raise ValueError("--resume needs --out, the directory of the run to continue.")
    dev = resolve_device(device)
    if out is not None:
        check_out_dir(out)  # fail before hours of training, not after
    loaded = _as_loaded(
        model, weights=weights, trust_checkpoint=trust_checkpoint, head=head, progress=progress
    )
    if loaded.head is None:
        raise ValueError("compare needs the model's classification head; name it with --head.")
    src, tgt = _as_domain(source, "source"), _as_domain(target, "target")
    if tgt is None or tgt.labels is None:
        raise ValueError("compare needs labelled --target data.")
    out_dir = Path(out) if out is not None else None

    previous = _read_previous(out_dir) if resume else None
    if previous is not None:
        # Resuming: the assessment (and its LR suggestion) is already on disk.
        base = {k: v for k, v in previous.items() if k not in _RUN_KEYS}
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
            progress=progress,
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
    if isinstance(unfreeze, int):
        if not 1 <= unfreeze <= len(blocks):
            raise ValueError(
                f"--unfreeze must be between 1 and {len(blocks)} blocks. Got {unfreeze}."
            )
        unfreeze = blocks[-unfreeze:]
    elif unfreeze is None:
        rec = base.get("recommendation") or {}
        unfreeze = rec.get("unfreeze") if rec.get("strategy") == "partial" else None
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
        },
    )

    done = _finished(previous, fingerprint, out_dir / "results.json") if previous else []
    used = _subsample(tgt, max_samples, seed)
    split = _restricted_splits(tgt, used, seed)
    x, y = materialize(tgt, used, prep)
    data = TargetData(
        x_train=x[split["train"]],
        y_train=y[split["train"]],
        x_val=x[split["val"]],
        y_val=y[split["val"]],
        x_test=x[split["test"]],
        y_test=y[split["test"]],
        num_classes=len(tgt.classes or []) or int(y.max()) + 1,
    )
    tracker = None
    if src is not None:
        sx, sy = source_eval_set(
            src, loaded, prep, n=source_eval_samples, seed=seed, warnings=warnings
        )
        tracker = ForgettingTracker(
            net,
            head=loaded.head,
            blocks=blocks,
            source_x=sx,
            source_y=sy,
            device=dev,
        )
    else:
        warnings.append("No source data: forgetting cannot be measured.")

    done_names = {s["name"] for s in done}
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
        },
        "strategies": [s for s in done if s["name"] in names],
        "warnings": warnings,
    }
    if done_names:
        warnings.append(f"Resumed: kept finished strategies {', '.join(sorted(done_names))}.")

    def finish(partial: bool) -> None:
        order = {n: i for i, n in enumerate(names)}
        results["strategies"].sort(key=lambda s: order.get(s["name"], len(order)))
        results["comparison_recommendation"] = select_strategy(
            results["strategies"],
            max_forgetting=max_forgetting,
            assessment=base.get("recommendation"),
        )
        env = environment(str(dev), seed)
        env["wall_s"] = time.perf_counter() - t_start
        env["partial"] = partial
        results["environment"] = env
        if out_dir is not None:
            _write(results, out_dir)

    todo = [n for n in names if n not in done_names]
    if out_dir is not None:
        (out_dir / "strategies").mkdir(parents=True, exist_ok=True)
    try:
        for name in tqdm(todo, desc="strategies", disable=not progress):
            ckpt = None
            if save_checkpoints and out_dir is not None:
                (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
                ckpt = str(out_dir / "checkpoints" / f"{name}.pt")
            try:
                entry = _run_with_oom_retry(
                    name,
                    net,
                    loaded.head,
                    blocks,
                    data,
                    tracker,
                    config,
                    dev,
                    progress,
                    ckpt,
                    warnings,
                )
            except Exception as exc:  # one strategy failing must not lose the others
                entry = {
                    "name": name,
                    "status": "failed",
                    "message": f"{type(exc).__name__}: {exc}",
                }
                warnings.append(f"Strategy {name} failed: {exc}")
            entry = jsonable(entry, warnings, name)
            results["strategies"].append(entry)
            if out_dir is not None:
                text = json.dumps(entry, indent=2) + "\n"
                atomic_write_text(out_dir / "strategies" / f"{name}.json", text)
            finish(partial=True)
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM, possibly in the middle of writing: write once more so
        # results.json and report.html hold every finished strategy, then stop.
        finish(partial=True)
        raise
    finish(partial=False)
    result = CompareResult(results)
    if out_dir is not None:
        result.results_path, result.report_path = out_dir / "results.json", out_dir / "report.html"
    return result
