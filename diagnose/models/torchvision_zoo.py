"""``torchvision:NAME`` models, with default weights read from torchvision's local cache only."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from diagnose.core import Arg, UsageError
from diagnose.models.loaded import LoadedModel, apply_weights, describe_model
from diagnose.models.weights_io import load_state_dict_checked, torch_load

__all__ = [
    "load_torchvision",
    "torchvision_weights_path",
]


def torchvision_weights_path(url: str) -> Path:
    """Where ``torch.hub`` keeps the file of a weights URL: ``<hub dir>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _weights_meta(weights_enum) -> tuple[int | None, tuple | None, tuple | None, list[str] | None]:
    """Crop size, mean, std and category names from a torchvision weights enum entry."""
    size = mean = std = None
    try:
        tf = weights_enum.transforms()
        crop = getattr(tf, "crop_size", None)
        if crop:
            size = int(crop[0]) if isinstance(crop, (list, tuple)) else int(crop)
        if getattr(tf, "mean", None) is not None:
            mean = tuple(float(v) for v in tf.mean)
            std = tuple(float(v) for v in tf.std)
    except Exception:  # some weights (video, detection) have other transforms
        pass
    categories = weights_enum.meta.get("categories")
    return size, mean, std, list(categories) if categories else None


def load_torchvision(spec: str, weights: str | None, trust_checkpoint: bool) -> LoadedModel:
    """Build ``torchvision.models.get_model(NAME, weights=None)`` and load weights without network.

    ``weights=None`` reads the default weights' file from the torch hub
    cache (``torch.hub.get_dir()/checkpoints``) and fails at once if it is
    not there; ``"random"`` gives a random init; a path loads that state
    dict. Input size, mean/std and class names come from the weights enum.
    """
    import torchvision

    name = spec.split(":", 1)[1]
    available = torchvision.models.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"unknown torchvision model {name!r} in {spec!r}: {hint}"
            "(torchvision.models.list_models() lists them all)."
        )
    try:
        default = torchvision.models.get_model_weights(name).DEFAULT
    except Exception:  # architectures without published weights
        default = None
    size, mean, std, categories = _weights_meta(default) if default is not None else (None,) * 4
    model = torchvision.models.get_model(name, weights=None)
    notes: list[str] = []
    if weights is None:
        if default is None:
            raise UsageError(
                f"torchvision model {name!r} has no default weights: pass ",
                Arg("weights", "PATH"), " (a state dict file) or ", Arg("weights", "random"), ".",
            )  # fmt: skip
        path = torchvision_weights_path(default.url)
        if not path.is_file():
            raise UsageError(
                f"the default weights of {spec} ({default}) are not in the local torchvision "
                f"cache at {path}; nothing is downloaded: pass ", Arg("weights", "PATH"),
                " (a state dict file) or ", Arg("weights", "random"), ".",
            )  # fmt: skip
        state = torch_load(path, False, "weights file")
        load_state_dict_checked(model, state, str(path))
        notes.append(f"{default} read from the local torchvision cache {path}")
        pretrained = True
    else:
        model, loaded = apply_weights(model, weights, trust_checkpoint, notes)
        pretrained = bool(loaded)
        if not pretrained:
            categories = None
        elif categories is not None:
            notes.append(
                f"class names, input size and normalisation assumed from {default} "
                "(torchvision's default weights for this architecture)"
            )
    lm = describe_model(
        model,
        spec,
        source_classes=categories,
        input_size=size,
        mean=mean,
        std=std,
        pretrained=pretrained,
        notes=notes,
    )
    if lm.source_classes is not None and len(lm.source_classes) != lm.num_source_classes:
        lm.source_classes = None
    return lm
