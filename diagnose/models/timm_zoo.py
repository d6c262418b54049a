"""``timm:NAME`` models, with pretrained weights from a file or timm's local cache only.

Needs the optional extra (``pip install 'transfer-diagnose[timm]'``). Nothing is
downloaded: ``weights=None`` reads the pretrained file from the Hugging Face
hub cache timm uses (``huggingface_hub.try_to_load_from_cache``, no network) and
fails at once, naming what to pass instead, when it is not there.

A model with a fixed input size (a Vision Transformer's patch grid) is created
at ``image_size`` when one is given (timm resamples the position embedding of
its pretrained weights); a user state dict saved at another size is refused
with a one-line error naming both sizes. Input size, mean and std come from
the model's ``pretrained_cfg``; its blocks are the ones timm describes in
``feature_info`` (found by :func:`probes.discover_layers`).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from diagnose.core import Arg, UsageError
from diagnose.models.loaded import LoadedModel, describe_model, random_init_copy
from diagnose.models.weights_io import extract_state_dict, load_state_dict_checked, torch_load

__all__ = [
    "load_timm",
    "timm_cached_file",
]

# The files timm publishes per pretrained tag on the hub, in the order it prefers them.
_HUB_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin")


def _import_timm():
    try:
        import timm
    except ImportError as exc:
        raise ValueError(
            "timm models need the timm package: pip install 'transfer-diagnose[timm]'."
        ) from exc
    return timm


def timm_cached_file(pretrained_cfg: dict) -> Path | None:
    """The local file of a pretrained config: its ``file``, else the hub cache (no network)."""
    local = pretrained_cfg.get("file")
    if local and Path(local).is_file():
        return Path(local)
    repo = pretrained_cfg.get("hf_hub_id")
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in (pretrained_cfg.get("hf_hub_filename"), *_HUB_FILES):
        if not filename:
            continue
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _fixed_size(model) -> int | None:
    """The input size a model is built for when it only takes that size (a ViT's patch grid)."""
    patch = getattr(model, "patch_embed", None)
    size = getattr(patch, "img_size", None)
    if size is None or getattr(patch, "dynamic_img_size", False):
        return None
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)


def _create(timm, name: str, image_size: int | None, **kwargs):
    """``timm.create_model`` at ``image_size`` where the architecture takes one (else as built)."""
    if image_size is not None:
        try:
            return timm.create_model(name, img_size=int(image_size), **kwargs)
        except TypeError:  # the architecture takes no img_size: it accepts any input size
            pass
    return timm.create_model(name, **kwargs)


def _load_file(model, path: str, trust_checkpoint: bool) -> None:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = extract_state_dict(torch_load(path, trust_checkpoint, "weights file"), path)
    load_state_dict_checked(model, state, str(path))


def _from_cache(timm, spec: str, name: str, image_size: int | None, notes: list[str]):
    """The model with its pretrained weights from timm's local cache (never downloaded)."""
    probe = timm.create_model(name, pretrained=False)
    cfg = dict(probe.pretrained_cfg)
    path = timm_cached_file(cfg)
    if path is None:
        raise UsageError(
            f"the pretrained weights of {spec} ({cfg.get('hf_hub_id') or 'no hub id'}) are "
            "not in timm's local cache; nothing is downloaded: pass ", Arg("weights", "PATH"),
            " (a state dict or .safetensors file) or ", Arg("weights", "random"), ".",
        )  # fmt: skip
    # timm loads the file itself, adapting it (position embeddings resampled to
    # image_size, classifier kept): exactly what pretrained=True would do, offline.
    model = _create(
        timm, name, image_size, pretrained=True, pretrained_cfg_overlay={"file": str(path)}
    )
    notes.append(f"pretrained weights of {name} read from timm's local cache {path}")
    return model


def _load_weights(model, spec: str, weights: str, trust_checkpoint: bool) -> None:
    """Load a weights file into the model; a position-embedding mismatch names image_size."""
    try:
        _load_file(model, weights, trust_checkpoint)
    except ValueError as exc:
        built = _fixed_size(model)
        if built is not None and "pos_embed" in str(exc):
            raise UsageError(
                f"weights in '{weights}' are for another input size than the {built} px "
                f"{spec} was created at; pass ", Arg("image_size", "N"),
                " with the size they were saved at.",
            ) from exc  # fmt: skip
        raise


def load_timm(
    spec: str, weights: str | None, trust_checkpoint: bool, image_size: int | None = None
) -> LoadedModel:
    """Build ``timm.create_model(NAME)`` and load weights without network.

    ``weights``: None reads the pretrained weights of ``NAME`` (an architecture,
    optionally ``.tag``) from timm's local cache; ``"random"`` gives a random
    init; a path loads that state dict (``.safetensors`` or a torch file).
    ``image_size``: create a fixed-size model (a ViT) at this size.
    """
    timm = _import_timm()
    name = spec.split(":", 1)[1]
    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"unknown timm model {arch!r} in {spec!r}: {hint}(timm.list_models() lists them)."
        )
    notes: list[str] = []
    if weights is None:
        model = _from_cache(timm, spec, name, image_size, notes)
    else:
        model = _create(timm, name, image_size, pretrained=False)
        if weights == "random":
            model = random_init_copy(model, seed=0)
            notes.append("random initialisation (weights='random'): no pretrained knowledge")
        else:
            _load_weights(model, spec, weights, trust_checkpoint)
            notes.append(f"weights loaded from {weights}")
    pretrained = weights != "random"
    cfg = model.pretrained_cfg
    fixed = _fixed_size(model)
    size = fixed or (int(cfg["input_size"][-1]) if cfg.get("input_size") else None)
    if fixed is not None:
        notes.append(f"{spec} takes {fixed}x{fixed} inputs only (its patch grid).")
    mean, std = cfg.get("mean"), cfg.get("std")
    return describe_model(
        model.eval(),
        spec,
        input_size=size,
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
        pretrained=pretrained,
        notes=notes,
    )
