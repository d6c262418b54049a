"""``diagnose audit``: what a finished fine-tuning made the model forget.

Given the pretrained model and a fine-tuned checkpoint of the same
architecture (possibly with a new head, as ``diagnose compare
--save-checkpoints`` writes), the audit measures on fixed held-out source
images (and target images when given):

- per-block **linear CKA** between the pretrained and the fine-tuned model
  (1.0 = the same representation up to rotation and scale);
- per-block **relative weight drift** ``||w - w0|| / ||w0||`` (head excluded);
- **source accuracy** of both through the ORIGINAL head, overall and per
  class (needs source labels matching the head's classes);
- **agreement**: fraction of source images on which the original head, on the
  fine-tuned features, predicts what the pretrained model predicted;

and writes a plain-words verdict computed from these numbers.

The source images are chosen exactly as :func:`diagnose.workflows.comparison.compare`
chooses them (the source test split, ``rng.choice`` of ``source_eval_samples``
with ``seed``), so auditing a checkpoint written by a comparison reproduces
its forgetting numbers.

Example::

    res = audit("demo", "cmp/checkpoints/full_low_lr.pt", "demo:digits", "demo:digits-noise")
    res.verdict
    # 'forgetting is concentrated in block3-block4; source accuracy -12.3 points; ...'
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import probes
from diagnose.core import (
    SCHEMA_VERSION,
    Arg,
    Audit,
    AuditLayer,
    RunResult,
    SourceAccuracy,
    UsageError,
    check_params,
    environment,
    jsonable,
    resolve_device,
)
from diagnose.measure import ForgettingMeter, weight_drift
from diagnose.models import (
    extract_state_dict,
    import_peft,
    is_adapter_dir,
    load_state_dict_checked,
    parameter_groups,
    plain_pointwise_convs,
    replace_module,
    resolve_preprocessing,
    saved_targets,
    torch_load,
)
from diagnose.report import check_out_dir
from diagnose.workflows._audit_measures import layer_rows, source_accuracy, target_cka
from diagnose.workflows.startup import model_and_data, source_eval_set, written

__all__ = [
    "ACCURACY_DROP_NOTABLE",
    "AGREEMENT_UNCHANGED",
    "AuditResult",
    "CKA_UNCHANGED",
    "THRESHOLDS",
    "audit",
    "build_finetuned",
    "verdict",
]

# A block whose source CKA with its pretrained self is at least this is "unchanged":
# on the demo CNN, run-to-run noise of CKA on ~128 images stays above it.
CKA_UNCHANGED = 0.98
# Agreement of the original head at least this (and no notable accuracy drop) with every
# block unchanged means nothing measurable was forgotten.
AGREEMENT_UNCHANGED = 0.99
# A source accuracy drop (fraction, 0.01 = 1 point) above this is worth naming.
ACCURACY_DROP_NOTABLE = 0.01
THRESHOLDS = {
    "cka_unchanged": CKA_UNCHANGED,
    "agreement_unchanged": AGREEMENT_UNCHANGED,
    "accuracy_drop_notable": ACCURACY_DROP_NOTABLE,
}


class AuditResult(RunResult):
    """An audit: ``to_dict()`` is results.json; paths are set when ``out`` was given."""

    @property
    def record(self) -> Audit:
        """The results as a typed :class:`diagnose.core.Audit`."""
        return Audit.from_dict(self.results)

    @property
    def verdict(self) -> str:
        return self.results["verdict"]

    @property
    def layers(self) -> list[dict]:
        return self.results["layers"]


def build_finetuned(
    pretrained: nn.Module, head: str, path: str | Path, *, trust_checkpoint: bool = False
) -> tuple[nn.Module, bool]:
    """A deep copy of ``pretrained`` with the fine-tuned weights at ``path`` loaded strictly.

    ``path`` is a state dict file, or a peft adapter directory (``save_pretrained``'s
    output, as ``compare --save-checkpoints`` writes for LoRA), which peft applies and
    merges. When the checkpoint's ``<head>.weight`` has another number of outputs
    than the pretrained head (a new task's head) but the same number of
    inputs, the copy's head is first replaced by an ``nn.Linear`` of the
    checkpoint's shape. Returns ``(model in eval mode, head_replaced)``.

    Raises ValueError for an unreadable file, a pickle of Python objects
    without ``trust_checkpoint``, or keys/shapes that do not match (naming them).
    """
    if is_adapter_dir(path):
        return _from_adapter(pretrained, head, Path(path))
    obj = torch_load(path, trust_checkpoint, "fine-tuned checkpoint")
    state = extract_state_dict(obj, path)
    model = copy.deepcopy(pretrained)
    replaced = _fit_head(model, head, state.get(f"{head}.weight"), f"{head}.bias" in state)
    load_state_dict_checked(model, state, str(path))
    return model.eval(), replaced


def _fit_head(model: nn.Module, head: str, weight: Any, bias: bool) -> bool:
    """Replace ``model``'s linear head by one of ``weight``'s shape when only its number
    of outputs differs (a new task's head); True when replaced."""
    old = model.get_submodule(head)
    if not (
        isinstance(old, nn.Linear)
        and isinstance(weight, torch.Tensor)
        and weight.ndim == 2
        and tuple(weight.shape) != tuple(old.weight.shape)
        and weight.shape[1] == old.in_features
    ):
        return False
    new = nn.Linear(old.in_features, int(weight.shape[0]), bias=bias)
    replace_module(model, head, new.to(old.weight.device, old.weight.dtype))
    return True


def _from_adapter(pretrained: nn.Module, head: str, path: Path) -> tuple[nn.Module, bool]:
    """The pretrained model with the peft adapter at ``path`` applied and merged."""
    peft = import_peft()
    model = copy.deepcopy(pretrained).cpu()
    try:
        weights = peft.utils.load_peft_weights(str(path), device="cpu")
        key = f"base_model.model.{head}"
        replaced = _fit_head(model, head, weights.get(f"{key}.weight"), f"{key}.bias" in weights)
        plain_pointwise_convs(model, saved_targets(model, path))  # as compare adapted them
        adapted = peft.PeftModel.from_pretrained(model, str(path))
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"The adapter in '{path}' could not be applied to the model (another "
            f"architecture, or missing files?): {first}"
        ) from exc
    return adapted.merge_and_unload().eval(), replaced


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}"


def _diverged(ft: nn.Module, groups: dict, measured: dict, warnings: list[str]) -> str | None:
    """The verdict for a fine-tuned model that diverged (non-finite weights or source
    outputs), with one warning; None when it did not."""
    params = dict(ft.named_parameters())
    bad = [
        g for g, names in groups.items()
        if any(not torch.isfinite(params[n]).all() for n in names)
    ]  # fmt: skip
    if not bad and not measured.get("diverged"):
        return None
    where = f"non-finite weights in {', '.join(bad)}" if bad else "non-finite features"
    text = (
        f"the fine-tuned model diverged ({where}): its outputs on the source images are not "
        "finite, so it has forgotten the source task entirely"
    )
    warnings.append(f"The checkpoint diverged: {where}; CKA, agreement and source accuracy "
                    "cannot be measured on it and it counts as total forgetting.")  # fmt: skip
    return text


def verdict(layers: list[dict], source_accuracy: dict, agreement: float | None) -> str:
    """A plain-words verdict from the audit's numbers (thresholds: the module constants).

    Example:
        >>> verdict([{"name": "b1", "cka_source": 0.995, "weight_drift": 0.01},
        ...          {"name": "b2", "cka_source": 0.80, "weight_drift": 0.2}],
        ...         {"drop": 0.123}, 0.8)
        'forgetting is concentrated in b2; source accuracy -12.3 points; original-head agreement 80.0%; early blocks b1 unchanged (CKA > 0.98)'
    """
    known = [x for x in layers if x.get("cka_source") is not None]
    changed = [x["name"] for x in known if x["cka_source"] < CKA_UNCHANGED]
    kept = [x["name"] for x in known if x["cka_source"] >= CKA_UNCHANGED]
    drop = source_accuracy.get("drop")
    drifts = [x.get("weight_drift") for x in layers if x.get("weight_drift") is not None]
    acc_ok = drop is None or drop <= ACCURACY_DROP_NOTABLE
    agree_ok = agreement is None or agreement >= AGREEMENT_UNCHANGED
    if known and not changed and acc_ok and agree_ok:
        words = [f"nothing measurable was forgotten: every block keeps CKA > {CKA_UNCHANGED}"]
        if drifts and max(drifts) == 0:
            words.append("the backbone weights are unchanged (drift 0)")
        if agreement is not None:
            words.append(f"the original head agrees on {100 * agreement:.1f}% of source images")
        if drop is not None:
            words.append(f"source accuracy {0.0 - 100 * drop:+.1f} points")
        return "; ".join(words)
    words = []
    if changed:
        if len(changed) == len(known):
            words.append(f"forgetting spans every block ({_span(changed)})")
        else:
            words.append(f"forgetting is concentrated in {_span(changed)}")
    elif not known:
        words.append("CKA could not be measured (non-finite features)")
    else:
        words.append(f"representations are kept (CKA > {CKA_UNCHANGED} in every block)")
    if drop is not None:
        words.append(f"source accuracy {0.0 - 100 * drop:+.1f} points")
    if agreement is not None:
        words.append(f"original-head agreement {100 * agreement:.1f}%")
    if kept and changed:
        first = "early blocks" if kept == [x["name"] for x in known[: len(kept)]] else "blocks"
        words.append(f"{first} {_span(kept)} unchanged (CKA > {CKA_UNCHANGED})")
    return "; ".join(words)


def audit(
    model: Any,
    finetuned: str | Path,
    source: Any,
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
    source_eval_samples: int = 128,
    out: str | Path | None = None,
    progress: bool = True,
    pool: str = "mean",
) -> AuditResult:
    """Audit a fine-tuned checkpoint for forgetting of the source task.

    ``model`` is the pretrained model (spec, nn.Module or LoadedModel, as in
    :func:`diagnose.workflows.assessment.assess`); ``finetuned`` a state dict file (or a peft adapter directory) of the same
    architecture (its head may differ). ``source_eval_samples`` source images
    (from the source test split, chosen as ``compare`` chooses them) and as
    many target images (from the target test split, within ``max_samples``)
    are measured. Results are written to ``out`` (results.json, report.html)
    when given. ``pool``: token pooling of transformer blocks, ``"mean"`` or
    ``"cls"`` (see :func:`diagnose.assess`).

    Example::

        audit("demo", "cmp/checkpoints/full_low_lr.pt", "demo:digits").verdict
    """
    t_start = time.perf_counter()
    check_params("audit", batch_size=batch_size, max_samples=max_samples, image_size=image_size,
                 pool=pool)  # fmt: skip
    dev = _checked(source_eval_samples, device, out)
    loaded, src, tgt = model_and_data(
        "audit", model, source, target, weights=weights, trust_checkpoint=trust_checkpoint,
        head=head, progress=progress, image_size=image_size,
    )  # fmt: skip
    if src is None:
        raise UsageError(
            "audit needs ", Arg("source"), " data: forgetting is measured on the source task."
        )
    ft, replaced = build_finetuned(
        loaded.model, loaded.head, finetuned, trust_checkpoint=trust_checkpoint
    )
    warnings: list[str] = []
    domains = [d for d in (src, tgt) if d is not None]
    prep = resolve_preprocessing(loaded, domains, image_size, normalize)
    net = loaded.model
    blocks = probes.discover_layers(net) if layers == "auto" else list(layers)
    meter_kw = {"head": loaded.head, "blocks": blocks, "device": dev, "batch_size": batch_size,
                "token_pool": pool}  # fmt: skip
    sx, sy = source_eval_set(src, loaded, prep, n=source_eval_samples, seed=seed, warnings=warnings)
    tracker = ForgettingMeter(net, source_x=sx, source_y=sy, **meter_kw)
    ft = ft.to(dev)
    measured, preds = tracker.measure_with_predictions(ft)
    cka_target, n_target = None, 0
    if tgt is not None:
        cka_target, n_target = target_cka(
            tgt, ft, {"pretrained": net, **meter_kw}, prep, max_samples=max_samples,
            n=source_eval_samples, seed=seed, warnings=warnings,
        )  # fmt: skip
    groups = parameter_groups(ft, blocks, loaded.head)
    drift = weight_drift(ft, {n: p.detach() for n, p in net.named_parameters()}, groups)
    rows = layer_rows(blocks, measured, cka_target, drift)
    accuracy = source_accuracy(tracker, measured, preds, src.classes)
    diverged = _diverged(ft, groups, measured, warnings)
    env = {**environment(str(dev), seed), "forgetting_layout": tracker.layout.describe()}
    record = Audit(
        schema=SCHEMA_VERSION,
        kind="audit",
        model=loaded.to_dict(),
        finetuned=_finetuned_info(finetuned, replaced, ft.get_submodule(loaded.head)),
        source={**src.summary(), "n_eval": tracker.n},
        target=None if tgt is None else {**tgt.summary(), "n_eval": n_target},
        blocks=tuple(blocks),
        layers=tuple(AuditLayer(**row) for row in rows),
        source_accuracy=SourceAccuracy(**accuracy),
        agreement=measured["agreement"],
        diverged=bool(diverged),
        verdict=diverged or verdict(rows, accuracy, measured["agreement"]),
        thresholds=dict(THRESHOLDS),
        preprocessing=prep.to_dict(),
        warnings=tuple(warnings),
        environment={**env, "wall_s": time.perf_counter() - t_start},
    )
    results = jsonable(record.to_dict(), warnings)
    results["warnings"] = warnings
    return written(AuditResult(results), out)


def _finetuned_info(finetuned, replaced: bool, head: nn.Module) -> dict:
    """results.json's ``finetuned``: the file, its format and the head it carries."""
    return {
        "path": str(finetuned),
        "format": "peft adapter, merged" if is_adapter_dir(finetuned) else "state dict",
        "head_replaced": replaced,
        "head_outputs": getattr(head, "out_features", None),
    }


def _checked(source_eval_samples, device, out) -> torch.device:
    """The device, after the checks that fail before any model is loaded."""
    if isinstance(source_eval_samples, bool) or int(source_eval_samples) < 2:
        raise ValueError(f"source_eval_samples must be at least 2. Got {source_eval_samples!r}.")
    dev = resolve_device(device)
    if out is not None:
        check_out_dir(out)
    return dev
