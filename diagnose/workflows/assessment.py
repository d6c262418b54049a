"""``diagnose assess``: how far is the target from what the model knows?

One capture pass per dataset (the pretrained model and its random-init
control run side by side on the target in the same pass), then every
analysis reuses the cached features: layer-wise probes, domain gap,
transferability, image statistics, an LR range test for a new head, and a
first recommendation. No fine-tuning happens here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

import probes
from diagnose.core import (
    SCHEMA_VERSION,
    Arg,
    Evidence,
    Recommendation,
    RunResult,
    UsageError,
    check_params,
    environment,
    resolve_device,
)
from diagnose.data import check_two_classes, domain_info, sample_thumbnails, upscale_warnings
from diagnose.decide import (
    DEFAULT_TRIAL_BUDGET,
    measured_recommendation,
    race_pool,
    recommend,
)
from diagnose.measure import layers as _measure
from diagnose.models import resolve_preprocessing
from diagnose.training import check_executor
from diagnose.workflows._assess_stages import (
    Prepared,
    features_by_role,
    head_measurements,
    image_statistics,
)
from diagnose.workflows.assess_capture import capture_domains, capture_layout, memory_share
from diagnose.workflows.startup import as_domain, as_loaded, forgetting_meter, written
from probes.capture import parse_size

__all__ = [
    "AssessResult",
    "assess",
]


class AssessResult(RunResult):
    """An assessment: ``to_dict()`` is results.json; paths are set when ``out`` was given."""

    @property
    def recommendation(self) -> Recommendation:
        """The recommended strategy, cut, LRs and epochs, typed (results.json's
        ``recommendation``)."""
        return Recommendation.from_dict(self.results["recommendation"])


# Held-out source images the race's finalists are measured on (compare's default).
RACE_SOURCE_IMAGES = 128


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
        res.recommendation.strategy
    """
    t_start = time.perf_counter()
    budget, trial_budget = _checked(
        source, target, max_memory, out, ray_address, pool=pool, batch_size=batch_size,
        max_samples=max_samples, image_size=image_size, max_forgetting=max_forgetting,
        trial_budget=trial_budget, executor=executor,
    )  # fmt: skip
    dev = resolve_device(device)
    torch.manual_seed(seed)
    loaded = as_loaded(
        model, weights=weights, trust_checkpoint=trust_checkpoint, head=head,
        progress=progress, image_size=image_size,
    )  # fmt: skip
    src, tgt, prep, warnings = _domains(loaded, source, target, image_size, normalize)
    net = loaded.model.to(dev)
    layer_names = _layer_names(net, layers)
    timings = {"load": time.perf_counter() - t_start}
    layout = capture_layout(net, prep, dev, batch_size)
    captured, stats, used, splits = capture_domains(
        loaded, prep, src, tgt, layer_names, max_samples=max_samples, seed=seed,
        batch_size=batch_size, device=dev, progress=progress, max_memory=budget, pool=pool,
        layout=layout,
    )  # fmt: skip
    timings["capture"] = time.perf_counter() - t_start - timings["load"]
    feats = features_by_role(captured, layer_names, warnings)
    t0 = time.perf_counter()
    rows = _measure.layer_measurements(
        layer_names, feats.target, feats.control, feats.target_labels, splits.get("target"),
        feats.source, feats.source_labels, splits.get("source"), seed=seed,
        n_permutations=n_permutations, warnings=warnings, progress=progress,
    )  # fmt: skip
    timings["probes_and_gap"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = Prepared(loaded, net, layer_names, src, tgt, used, splits, prep, dev)
    transfer, lr_find, heads, rows = head_measurements(
        feats, rows, captured, run, seed=seed, progress=progress, warnings=warnings
    )
    timings["transfer_and_lr_find"] = time.perf_counter() - t0
    results = _results(run, rows, warnings, layers_from="auto" if layers == "auto" else "user")
    results.update(
        transferability=transfer, head_accuracy=heads, lr_find=lr_find,
        image_stats=image_statistics(stats, prep, loaded, warnings),
        samples=sample_thumbnails({"source": src, "target": tgt}, seed=seed),
        capture=_measure.storage_summary(
            captured, budget, memory_share(budget, src, tgt), layout.to_dict()
        ),
    )  # fmt: skip
    for cap in captured.values():
        cap.close()  # a temporary on-disk store is deleted now, not at exit
    t0 = time.perf_counter()  # the race
    results["recommendation"] = _recommendation(
        _evidence(run, rows, lr_find), results, run, feats, max_forgetting, token_pool=pool,
        trial_budget=trial_budget, batch_size=batch_size, seed=seed, progress=progress,
        executor=executor, ray_address=ray_address,
    ).to_dict()  # fmt: skip
    timings["race"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    env = {"wall_s": timings["total"], "timings_s": timings}
    results["environment"] = {**environment(str(dev), seed), **env}
    return written(AssessResult(results), out)


def _domains(loaded, source, target, image_size, normalize):
    """``(source, target, preprocessing, warnings)``: the data as domains, and how its
    images are prepared for the model."""
    src, tgt = as_domain(source, "source"), as_domain(target, "target")
    warnings = _domain_warnings(src, tgt)
    domains = [d for d in (src, tgt) if d is not None]
    prep = resolve_preprocessing(loaded, domains, image_size, normalize)
    warnings.extend(upscale_warnings(domains, prep.image_size))
    return src, tgt, prep, warnings


def _checked(source, target, max_memory, out, ray_address, **declared):
    """``(memory budget in bytes or None, trial budget)`` after the arguments' checks
    (``declared``: the parameters of :data:`diagnose.core.PARAMS` that assess takes), before
    minutes of measuring."""
    if source is None and target is None:
        raise UsageError(
            "assess needs ", Arg("target"), " (and ideally ", Arg("source"), ") data; neither "
            "was given.",
        )  # fmt: skip
    check_params("assess", **declared)
    check_executor(declared["executor"], ray_address)
    if out is not None:
        from diagnose.report import check_out_dir  # the report's plotting stack, only here

        check_out_dir(out)
    budget = None if max_memory is None else parse_size(max_memory, "max_memory")
    return budget, float(declared["trial_budget"])


def _layer_names(net, layers) -> list[str]:
    names = probes.discover_layers(net) if layers == "auto" else list(layers)
    if not names:
        raise UsageError(
            "no layers to measure: pass ", Arg("layers", "a,b,c"), " (see probes.discover_layers)."
        )
    probes.resolve_layers(net, names)  # name errors against the user's model, not a wrapper
    return names


def _results(run: Prepared, rows, warnings: list[str], *, layers_from: str) -> dict:
    """results.json's frame: the model, the domains and the per-layer rows, in key order."""
    src, tgt, used, splits = run.src, run.tgt, run.used, run.splits
    return {
        "schema": SCHEMA_VERSION,
        "kind": "assess",
        "model": {**run.loaded.to_dict(), "layers_from": layers_from},
        "source": domain_info(src, used["source"], splits["source"]) if src is not None else None,
        "target": domain_info(tgt, used["target"], splits["target"]) if tgt is not None else None,
        "preprocessing": run.prep.to_dict(),
        "layers": [row.to_dict() for row in rows],
        "penultimate_layer": run.layers[-1],
        "transferability": None,
        "head_accuracy": {},
        "image_stats": {},
        "lr_find": None,
        "samples": None,
        "warnings": warnings,
    }


def _domain_warnings(src, tgt) -> list[str]:
    """The domains' own warnings, and a same-data source and target said."""
    if tgt is not None:
        check_two_classes(tgt)
    warnings: list[str] = []
    for d in (src, tgt):
        if d is not None:
            warnings.extend(f"{d.name}: {w}" for w in d.warnings)
    if src is not None and tgt is not None and src.name == tgt.name:
        warnings.append("Source and target are the same data; the gap measures nothing but noise.")
    return warnings


def _evidence(run: Prepared, rows: list, lr_find: dict | None) -> Evidence:
    """What the decisions read: the typed layer rows, the LR range test's suggestion,
    the domains' classes and the target's labelled train+val count."""
    src, tgt, split = run.src, run.tgt, run.splits.get("target")
    labelled = sum(len(split[k]) for k in ("train", "val") if k in split) if split else 0
    return Evidence(
        layers=tuple(rows),
        suggested_lr=(lr_find or {}).get("suggested_lr"),
        source_classes=tuple(src.classes) if src is not None and src.classes else None,
        target_classes=tuple(tgt.classes) if tgt is not None and tgt.classes else None,
        target_labelled=labelled or (len(run.used["target"]) if tgt is not None else 0),
    )


def _recommendation(evidence, results, run: Prepared, feats, max_forgetting, token_pool, **race_kw):
    """The rule prior, then the race's measured recommendation on the target's train+val
    (with what its finalists forgot, on held-out source images, where there are some)."""
    prior = recommend(evidence, max_forgetting=max_forgetting)
    warnings, split = results["warnings"], run.splits.get("target")
    pool, pool_splits, meter = None, None, None
    if race_kw["trial_budget"] > 0 and feats.target_labels is not None and split is not None:
        pool, pool_splits = race_pool(run.tgt, run.used["target"], split, run.prep, warnings)
    if pool is not None and run.src is not None and run.loaded.head is not None:
        try:
            meter = forgetting_meter(
                run.src, run.loaded, run.prep, run.layers, n=RACE_SOURCE_IMAGES,
                seed=race_kw["seed"], device=run.device, pool=token_pool, warnings=warnings,
            )  # fmt: skip
        except ValueError as exc:  # e.g. non-finite source features: race without it, say so
            warnings.append(f"The race did not measure forgetting: {exc}")
    return measured_recommendation(
        evidence, prior, model=run.net, head=run.loaded.head, blocks=run.layers,
        pool=pool, splits=pool_splits, device=run.device, warnings=warnings, meter=meter,
        **race_kw,
    )  # fmt: skip
