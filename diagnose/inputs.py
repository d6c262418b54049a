"""The inputs every workflow accepts, normalised: a model and the source/target data.

``assess``, ``compare`` and ``audit`` take a model as a spec string, an
``nn.Module`` or a ``LoadedModel``, and data as a spec, a path or a ``Domain``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from diagnose.data import Domain, load_domain
from diagnose.models import LoadedModel, find_head, load_model

__all__ = ["as_domain", "as_loaded"]


def as_loaded(model: Any, **kwargs) -> LoadedModel:
    """``model`` (a spec string, an ``nn.Module`` or a ``LoadedModel``) as a ``LoadedModel``.

    ``kwargs`` go to :func:`diagnose.models.load_model` for a spec; for a module,
    ``head`` names its classification head (else :func:`find_head` looks).
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, str):
        return load_model(model, **kwargs)
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
