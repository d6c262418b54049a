"""The inputs every workflow accepts, normalised: a model and the source/target data.

``assess``, ``compare`` and ``audit`` take a model as a spec string, an
``nn.Module`` or a ``LoadedModel``, and data as a spec, a path or a ``Domain``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diagnose.core import Arg, RunResult, UsageError
from diagnose.data import (
    Domain,
    Preprocessing,
    load_domain,
    materialize_readable,
    pick_eval,
)
from diagnose.measure import ForgettingMeter
from diagnose.models import LoadedModel, find_head, load_model

__all__ = [
    "as_domain",
    "as_loaded",
    "forgetting_meter",
    "model_and_data",
    "source_eval_set",
    "written",
]


def as_loaded(model: Any, **kwargs) -> LoadedModel:
    """``model`` (a spec string, an ``nn.Module`` or a ``LoadedModel``) as a ``LoadedModel``.

    ``kwargs`` go to :func:`diagnose.models.loading.load_model` for a spec; for a module,
    ``head`` names its classification head (else :func:`find_head` looks).
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model, **kwargs)
    kwargs.pop("image_size", None)  # a module is used as built
    if isinstance(model, nn.Module):
        head = kwargs.get("head") or find_head(model)
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        out = getattr(model.get_submodule(head), "out_features", None) if head else None
        return LoadedModel(
            model=model.eval(),
            name=type(model).__name__,
            head=head,
            source_classes=None,
            num_source_classes=out,
            input_channels=first_conv.in_channels if first_conv is not None else 3,
            input_size=None,
            mean=None,
            std=None,
            pretrained=True,
            notes=["Model given as a Python object; its preprocessing is not known."],
        )
    raise TypeError(
        f"The 'model' parameter must be a spec string, an nn.Module or a LoadedModel. "
        f"Got {type(model).__name__} instead."
    )


def as_domain(data: Any, what: str) -> Domain | None:
    """``data`` (a data spec, a path or a ``Domain``; None passes) as a ``Domain``;
    ``what`` names the parameter in the error."""
    if data is None or isinstance(data, Domain):
        return data
    if isinstance(data, (str, Path)):
        return load_domain(str(data))
    raise TypeError(
        f"The '{what}' parameter must be a data spec string or a Domain. Got {type(data).__name__}."
    )


def source_eval_set(
    src: Domain,
    loaded: LoadedModel,
    prep: Preprocessing,
    *,
    n: int,
    seed: int,
    warnings: list[str],
    labels: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Held-out source images and, when they match the head's classes, their labels.

    ``labels``: None returns the labels when the source's class names are the
    model's; True returns them whenever the source has labels; False never.
    """
    split = src.splits(seed)
    pool = split["test"] if len(split["test"]) else np.arange(len(src.dataset))
    x, y, _ = materialize_readable(src, pick_eval(pool, n, seed), prep, warnings)
    label_match = src.labels is not None and src.classes == loaded.source_classes
    if labels is not None:
        return x, (y if labels and src.labels is not None else None)
    if src.labels is not None and not label_match:
        warnings.append(
            "Source classes do not match the model's head classes: forgetting is measured "
            "label-free (agreement and CKA) only."
        )
    return x, (y if label_match else None)


def model_and_data(
    workflow: str,
    model: Any,
    source: Any,
    target: Any,
    *,
    weights: str | None,
    trust_checkpoint: bool,
    head: str | None,
    progress: bool,
    image_size: int | None,
) -> tuple[LoadedModel, Domain | None, Domain | None]:
    """The loaded model (which must have a classification head) and the two domains.

    ``workflow`` names the caller in the error when no head is found.
    """
    loaded = as_loaded(
        model,
        weights=weights,
        trust_checkpoint=trust_checkpoint,
        head=head,
        progress=progress,
        image_size=image_size,
    )
    if loaded.head is None:
        raise UsageError(
            f"{workflow} measures forgetting through the model's classification head, and "
            "none was found: name it with ",
            Arg("head"),
            "; a backbone without one is assessed by assess, whose race trains a new head.",
        )
    return loaded, as_domain(source, "source"), as_domain(target, "target")


def written(result: RunResult, out: str | Path | None) -> RunResult:
    """``result`` with its results.json and report.html written to ``out`` (if given) and
    their paths set."""
    if out is not None:
        from diagnose.report import write_outputs

        result.results_path, result.report_path = write_outputs(result.results, out)
    return result


def forgetting_meter(
    src, loaded: LoadedModel, prep, blocks: list[str], *, n: int, seed: int, device, pool: str,
    warnings: list[str],
) -> ForgettingMeter | None:  # fmt: skip
    """The meter of forgetting on ``n`` held-out ``src`` images (None without source data,
    with a warning)."""
    if src is None:
        warnings.append("No source data: forgetting cannot be measured.")
        return None
    sx, sy = source_eval_set(src, loaded, prep, n=n, seed=seed, warnings=warnings)
    return ForgettingMeter(
        loaded.model,
        head=loaded.head,
        blocks=blocks,
        source_x=sx,
        source_y=sy,
        device=device,
        token_pool=pool,
    )
