"""``diagnose assess``: how far is the target from what the model knows?

One capture pass per dataset (the pretrained model and its random-init
control run side by side on the target in the same pass), then every
analysis reuses the cached features: layer-wise probes, domain gap,
transferability, image statistics, an LR range test for a new head, and a
first recommendation. No fine-tuning happens here.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import probes
from diagnose.core import (
    SCHEMA_VERSION,
    RunResult,
    environment,
    resolve_device,
)
from diagnose.data import (
    check_two_classes,
    domain_info,
    drift_table,
    normalization_check,
    sample_thumbnails,
    upscale_warnings,
)
from diagnose.decide import (
    DEFAULT_TRIAL_BUDGET,
    check_trial_budget,
    measured_recommendation,
    race_pool,
    recommend,
)
from diagnose.measure import TOKEN_POOLS
from diagnose.measure import layers as _measure
from diagnose.models import resolve_preprocessing
from diagnose.training import check_executor
from diagnose.workflows.assess_capture import capture_domains, memory_share
from diagnose.workflows.startup import as_domain, as_loaded
from probes.capture import parse_size

__all__ = [
    "AssessResult",
    "assess",
]


class AssessResult(RunResult):
    """An assessment: ``to_dict()`` is results.json; paths are set when ``out`` was given."""

    @property
    def recommendation(self) -> dict:
        return self.results["recommendation"]


def assess(
    model: Any,
    source: Any = None,
    target: Any = None,
    *,
    weights: str | None = None,
    trust_checkpoint: bool = False,
    head: str | None = None,
    layers: str | list[str] = "auto",
    image_size: int | None = None,
    normalize: Any = None,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 64,
    max_samples: int | None = None,
    n_permutations: int = 200,
    out: str | Path | None = None,
    progress: bool = True,
    max_memory: int | str | None = None,
    max_forgetting: float | None = None,
    trial_budget: float = DEFAULT_TRIAL_BUDGET,
    pool: str = "mean",
    executor: str = "local",
    ray_address: str | None = None,
) -> AssessResult:
    """Assess how well a pretrained model's features fit a target domain, and how to adapt it.

    Captures every block's pooled features on source and target (and on a
    random-init control), measures per-layer linear probes, domain gaps,
    transferability scores, image statistics, an LR range test and Auto-RGN,
    then recommends an adaptation from a budgeted trial race
    (:mod:`diagnose.decide.race`), or from the rules alone at ``trial_budget=0``.

    Args:
        model: a spec (``"demo"``, ``"torchvision:resnet18"``, ``"timm:NAME"``,
            ``"pkg.mod:fn"``, a checkpoint path), an ``nn.Module`` or a
            :class:`diagnose.models.LoadedModel`.
        source: the source data (what the model was trained on): a data spec
            (``"demo:digits"``, an ImageFolder path, ``"pkg.mod:fn"``), a
            :class:`diagnose.data.Domain`, or None.
        target: the target data, in the same forms; needs labels for probes.
        weights: a state dict file for a spec's architecture, or ``"random"``.
        trust_checkpoint: allow pickled (non state-dict) checkpoint files; only
            for files you trust (they can run code when loaded).
        head: qualified module name of the classification head (None: found).
        layers: block names to measure, or ``"auto"`` (:func:`probes.discover_layers`).
        image_size: resize images to this many pixels square (None: the model's
            declared size, else the images' native size).
        normalize: ``"MEAN,STD"`` (one pair or one per channel), ``"none"``, or
            None for the model's own normalisation.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        seed: seeds the splits, subsamples, control model and race.
        batch_size: images per forward pass (and per training step in the race).
        max_samples: at most this many images per domain (None: all).
        n_permutations: permutations of the MMD test (more: a finer p-value).
        out: write results.json and report.html to this folder.
        progress: show progress bars with their true totals.
        max_memory: bound on the captured features (bytes, or ``"2GB"``,
            ``"512MiB"``), shared by the target and source passes; a pass over
            its share streams features to temporary ``.npy`` files.
        max_forgetting: the forgetting budget the recommendation must respect,
            a fraction in [0, 1] of source accuracy (below 0.05 only feature
            extraction qualifies).
        trial_budget: the share of a full sweep's training FLOPs the trial race
            may spend, in [0, 1]; 0 skips the race (the rules' prediction,
            marked unmeasured).
        pool: how a block that outputs a token sequence (a Vision Transformer's)
            becomes one vector per image: ``"mean"`` over tokens or ``"cls"``.
        executor: ``"local"`` (the race's trials one after another) or ``"ray"`` (each
            rung's trials as Ray tasks, one GPU or CPU each; the same candidates and
            scores at the same seed). Without Ray installed it runs locally, with a warning.
        ray_address: a running Ray cluster to join (``executor="ray"`` only).

    Returns:
        An :class:`AssessResult`; ``to_dict()`` is results.json and
        ``recommendation`` the recommended strategy, cut, LRs and epochs.

    Example::

        res = assess("demo", "demo:digits", "demo:digits-noise", out="report/")
        res.recommendation["strategy"]
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if source is None and target is None:
        raise ValueError("assess needs 'target' (and ideally 'source') data; neither was given.")
    if pool not in TOKEN_POOLS:
        raise ValueError(f"'pool' must be 'mean' or 'cls' (token pooling). Got {pool!r}.")
    if batch_size < 1:
        raise ValueError(f"'batch_size' must be at least 1. Got {batch_size}.")
    if max_forgetting is not None and not 0 <= max_forgetting <= 1:
        raise ValueError(f"'max_forgetting' must be between 0 and 1. Got {max_forgetting}.")
    budget = None if max_memory is None else parse_size(max_memory, "max_memory")
    trial_budget = check_trial_budget(trial_budget)
    check_executor(executor, ray_address)
    dev = resolve_device(device)
    if out is not None:
        from diagnose.report import check_out_dir

        check_out_dir(out)  # before minutes of measuring, not after
    torch.manual_seed(seed)
    loaded = as_loaded(
        model,
        weights=weights,
        trust_checkpoint=trust_checkpoint,
        head=head,
        progress=progress,
        image_size=image_size,
    )
    src, tgt = as_domain(source, "source"), as_domain(target, "target")
    if tgt is not None:
        check_two_classes(tgt)
    warnings: list[str] = []
    for d in (src, tgt):
        if d is not None:
            warnings.extend(f"{d.name}: {w}" for w in d.warnings)
    if src is not None and tgt is not None and src.name == tgt.name:
        warnings.append("Source and target are the same data; the gap measures nothing but noise.")
    prep = resolve_preprocessing(
        loaded, [d for d in (src, tgt) if d is not None], image_size, normalize
    )
    warnings.extend(upscale_warnings([d for d in (src, tgt) if d is not None], prep.image_size))
    net = loaded.model.to(dev)
    layer_names = probes.discover_layers(net) if layers == "auto" else list(layers)
    if not layer_names:
        raise ValueError("no layers to measure: pass layers=a,b,c (see probes.discover_layers).")
    probes.resolve_layers(net, layer_names)  # name errors against the user's model, not a wrapper
    timings["load"] = time.perf_counter() - t_start

    has_head = loaded.head is not None
    t0 = time.perf_counter()
    captured, stats, used, splits = capture_domains(
        loaded,
        prep,
        src,
        tgt,
        layer_names,
        max_samples=max_samples,
        seed=seed,
        batch_size=batch_size,
        device=dev,
        progress=progress,
        max_memory=budget,
        pool=pool,
    )
    timings["capture"] = time.perf_counter() - t0
    for cap in captured.values():
        warnings.extend(getattr(cap, "warnings", []))

    tf = cf = tl = None
    if "target" in captured:
        cap = captured["target"]
        tf = {n: cap.features[f"pretrained.{n}"] for n in layer_names}
        cf = {n: cap.features[f"control.{n}"] for n in layer_names}
        tl = cap.labels
        if tl is not None and (tl < 0).any():
            warnings.append(
                "Some target images are unlabelled; target probes use labelled ones only."
            )
            tl = None if (tl < 0).all() else tl
    sf = sl = None
    if "source" in captured:
        sf, sl = captured["source"].features, captured["source"].labels
        if sl is not None and (sl < 0).any():
            warnings.append("Source images are unlabelled: the source probe is skipped.")
            sl = None
    if src is None:
        warnings.append("No source data: the domain gap and the source probe are skipped.")
    t0 = time.perf_counter()
    rows = _measure.layer_measurements(
        layer_names,
        tf,
        cf,
        tl,
        splits.get("target"),
        sf,
        sl,
        splits.get("source"),
        seed=seed,
        n_permutations=n_permutations,
        warnings=warnings,
        progress=progress,
    )
    timings["probes_and_gap"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    last = layer_names[-1]
    transfer = lr_find = None
    heads: dict[str, float | None] = {}
    if tf is not None and tl is not None:
        logits = captured["target"].output if has_head else None
        transfer = _measure.transferability(
            tf[last], tl, logits, layer=last, warnings=warnings, seed=seed
        )
        train_idx = np.concatenate([splits["target"]["train"], splits["target"]["val"]])
        lr_find = _measure.safe(
            "LR range test",
            warnings,
            _measure.lr_find_head,
            tf[last],
            tl,
            train_idx,
            seed=seed,
            progress=progress,
        )
        if has_head:
            rgn = _measure.safe(
                "relative gradient norms",
                warnings,
                _measure.target_rgn,
                net,
                loaded.head,
                layer_names,
                tgt,
                used["target"],
                splits["target"]["train"],
                prep,
                seed,
                dev,
                # The layout the target pass measured faster (a speed choice only: the
                # values differ by float rounding between layouts).
                memory_format=_chosen_layout(captured["target"]),
            )
            rows = [replace(row, rgn=(rgn or {}).get(row.name)) for row in rows]
        if has_head and loaded.source_classes and tgt.classes == loaded.source_classes:
            heads["target_head_accuracy"] = float((logits.argmax(1) == tl).mean())
    if has_head and sl is not None and src.classes == loaded.source_classes:
        heads["source_head_accuracy"] = float((captured["source"].output.argmax(1) == sl).mean())
    timings["transfer_and_lr_find"] = time.perf_counter() - t0

    image_stats: dict = {k: v.to_dict() for k, v in stats.items()}
    if "source" in stats and "target" in stats:
        image_stats["drift"] = drift_table(stats["source"], stats["target"])
    if "target" in stats:
        if prep.mean is not None:
            exp_mean, exp_std, frm = prep.mean, prep.std, "the normalisation applied"
        elif loaded.mean is not None:
            exp_mean, exp_std, frm = list(loaded.mean), list(loaded.std), "the model's weights"
        elif "source" in stats:
            exp_mean, exp_std = stats["source"].channel_mean(), stats["source"].channel_std()
            frm = "the source images, which the model was trained on"
        else:
            exp_mean = exp_std = None
            frm = "nothing: the model declares no normalisation and there is no source data"
        check, norm_warnings = normalization_check(stats["target"], exp_mean, exp_std, frm)
        image_stats["normalization_check"] = check
        warnings.extend(norm_warnings)

    results: dict = {
        "schema": SCHEMA_VERSION,
        "kind": "assess",
        "model": {**loaded.to_dict(), "layers_from": "auto" if layers == "auto" else "user"},
        "source": domain_info(src, used["source"], splits["source"]) if src is not None else None,
        "target": domain_info(tgt, used["target"], splits["target"]) if tgt is not None else None,
        "preprocessing": prep.to_dict(),
        "layers": [row.to_dict() for row in rows],
        "penultimate_layer": last,
        "transferability": transfer,
        "head_accuracy": heads,
        "image_stats": image_stats,
        "lr_find": lr_find,
        "samples": sample_thumbnails({"source": src, "target": tgt}, seed=seed),
        "warnings": warnings,
    }
    results["capture"] = _measure.storage_summary(captured, budget, memory_share(budget, src, tgt))
    for cap in captured.values():
        cap.close()  # a temporary on-disk store is deleted now, not at exit
    t0 = time.perf_counter()
    prior = recommend(results, max_forgetting=max_forgetting)
    pool, pool_splits = None, None
    if trial_budget > 0 and tl is not None and splits.get("target") is not None:
        pool, pool_splits = race_pool(tgt, used["target"], splits["target"], prep, warnings)
    results["recommendation"] = measured_recommendation(
        results,
        prior,
        model=net,
        head=loaded.head,
        blocks=layer_names,
        pool=pool,
        splits=pool_splits,
        trial_budget=trial_budget,
        batch_size=batch_size,
        seed=seed,
        device=dev,
        progress=progress,
        warnings=warnings,
        executor=executor,
        ray_address=ray_address,
    )
    timings["race"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    env = environment(str(dev), seed)
    env["wall_s"] = timings["total"]
    env["timings_s"] = timings
    results["environment"] = env
    result = AssessResult(results)
    if out is not None:
        from diagnose.report import write_outputs

        result.results_path, result.report_path = write_outputs(results, out)
    return result


def _chosen_layout(captured) -> str | None:
    """ "channels_last" when a capture pass ran in it, else None (the model's own layout)."""
    choice = getattr(captured, "memory_format", None) or {}
    return "channels_last" if choice.get("memory_format") == "channels_last" else None
