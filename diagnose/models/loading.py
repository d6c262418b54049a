"""Loading models: the demo CNN, torchvision architectures, ``module:function`` and checkpoints.

Nothing is ever downloaded. Files are read with ``torch.load(weights_only=True)``;
a file that needs full unpickling (which can run arbitrary code) is refused
unless the caller passes ``trust_checkpoint=True``.

Example:
    >>> lm = load_model("demo")                      # pretrained on demo:digits, cached
    >>> lm.head, lm.input_size, lm.num_source_classes
    ('head', 32, 10)
    >>> ctrl = random_init_copy(lm.model, seed=0)    # the "what does pretraining buy" control
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping

from torch import nn

from diagnose.core import Arg, UsageError, call_spec, is_callable_spec
from diagnose.models.demo_cnn import DemoCNN, load_or_pretrain
from diagnose.models.loaded import LoadedModel, apply_weights, describe_model
from diagnose.models.weights_io import torch_load

__all__ = [
    "demo_model",
    "demo_model_info",
    "load_model",
]

_CHECKPOINT_EXT = (".pt", ".pth", ".ckpt", ".bin")


def demo_model(*, cache_dir: str | None = None, seed: int = 0, progress: bool = True) -> nn.Module:
    """The demo CNN pretrained on ``demo:digits`` (eval mode), trained once and cached.

    The first call trains for a few seconds (a tqdm bar unless
    ``progress=False``) and caches the weights; later calls load them. See
    ``demo_model_info`` for the measured accuracy and training time.
    """
    model, _, _ = load_or_pretrain(cache_dir, seed, progress)
    return model


def demo_model_info(cache_dir: str | None = None, seed: int = 0) -> dict:
    """Pretraining metadata of the demo model (training it first if not cached).

    Keys: ``seed``, ``recipe_version``, ``epochs``, ``n_train``, ``n_test``,
    ``source_test_accuracy`` (fraction in [0, 1] on the test split of
    ``demo:digits``), ``train_seconds``, ``torch_version``, ``cache_path``,
    ``from_cache``, ``notes``.
    """
    _, meta, notes = load_or_pretrain(cache_dir, seed, progress=False)
    return dict(meta, notes=notes)


def load_model(
    spec: str,
    *,
    weights: str | None = None,
    trust_checkpoint: bool = False,
    head: str | None = None,
    progress: bool = True,
    cache_dir: str | None = None,
    image_size: int | None = None,
) -> LoadedModel:
    """Load a model from ``demo``, ``torchvision:NAME``, ``timm:NAME``, ``module.path:function``
    or a checkpoint.

    ``weights``: a state dict file to load into the architecture, or
    ``"random"`` for a random initialisation; for ``torchvision:NAME`` the
    default (None) reads torchvision's default weights from its local cache
    only, and for ``timm:NAME`` timm's local cache only (the ``timm`` extra).
    ``image_size`` creates a timm model with a fixed input size (a ViT) at that
    size. ``head`` overrides the detected classification head (a module
    name). The model is returned in eval mode. Every failure is a one-line
    ``ValueError`` saying what to pass instead.
    """
    from diagnose.models.torchvision_zoo import load_torchvision

    spec = str(spec)
    if spec == "demo":
        lm = _load_demo(weights, trust_checkpoint, progress, cache_dir)
    elif spec.startswith("torchvision:"):
        lm = load_torchvision(spec, weights, trust_checkpoint)
    elif spec.startswith("timm:"):
        from diagnose.models.timm_zoo import load_timm

        lm = load_timm(spec, weights, trust_checkpoint, image_size=image_size)
    elif os.path.isfile(spec) or spec.lower().endswith(_CHECKPOINT_EXT):
        lm = _load_checkpoint(spec, weights, trust_checkpoint)
    elif is_callable_spec(spec):
        lm = _load_callable(spec, weights, trust_checkpoint)
    else:
        raise ValueError(
            f"unknown model spec {spec!r}: pass 'demo', 'torchvision:NAME' (e.g. "
            "torchvision:resnet18), 'timm:NAME' (e.g. timm:resnet18), module.path:function returning an nn.Module, or a "
            "checkpoint file (.pt/.pth/.ckpt)."
        )
    if head is not None:
        modules = dict(lm.model.named_modules())
        if head not in modules or head == "":
            close = difflib.get_close_matches(head, [n for n in modules if n], n=5)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise ValueError(
                f"head {head!r} is not a module of {spec}.{hint} "
                "List them with [n for n, _ in model.named_modules()]."
            )
        lm.head = head
        out = getattr(modules[head], "out_features", None)
        lm.num_source_classes = int(out) if out is not None else None
        if lm.source_classes is not None and len(lm.source_classes) != lm.num_source_classes:
            lm.source_classes = None
    lm.model.eval()
    return lm


def _load_demo(
    weights: str | None, trust_checkpoint: bool, progress: bool, cache_dir: str | None
) -> LoadedModel:
    notes: list[str] = []
    classes = [str(d) for d in range(10)]
    if weights is not None:
        model, pretrained = apply_weights(DemoCNN(), weights, trust_checkpoint, notes)
        if not pretrained:
            classes = None
    else:
        model, meta, notes = load_or_pretrain(cache_dir, 0, progress)
        pretrained = True
        verb = "loaded from" if meta["from_cache"] else "cached at"
        notes = [
            "demo CNN pretrained on demo:digits (train+val split, seed 0): "
            f"{meta['source_test_accuracy']:.1%} accuracy on its {meta['n_test']} test images, "
            f"trained in {meta['train_seconds']:.1f} s; {verb} {meta['cache_path']}",
            *notes,
        ]
    return describe_model(
        model,
        "demo",
        source_classes=classes,
        input_size=32,
        pretrained=bool(pretrained),
        notes=notes,
    )


def _load_checkpoint(spec: str, weights: str | None, trust_checkpoint: bool) -> LoadedModel:
    obj = torch_load(spec, trust_checkpoint, "checkpoint")
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), nn.Module):
        obj = obj["model"]
    if not isinstance(obj, nn.Module):
        if isinstance(obj, Mapping):
            raise UsageError(
                f"{spec} is a state dict with no architecture: pass ", Arg("model", "ARCH"), " ",
                Arg("weights", str(spec)), " (ARCH: torchvision:NAME or module.path:function).",
            )  # fmt: skip
        raise ValueError(f"checkpoint '{spec}' holds a {type(obj).__name__}, not an nn.Module.")
    notes = [f"full model unpickled from {spec} (trusted with --trust-checkpoint)"]
    model, pretrained = apply_weights(obj, weights, trust_checkpoint, notes)
    return describe_model(model, spec, pretrained=pretrained is not False, notes=notes)


def _load_callable(spec: str, weights: str | None, trust_checkpoint: bool) -> LoadedModel:
    obj = call_spec(spec, "an nn.Module", "model spec")
    if not isinstance(obj, nn.Module):
        raise ValueError(
            f"model spec {spec!r} returned a {type(obj).__name__}, not a torch.nn.Module."
        )
    notes = [f"model built by {spec}()"]
    model, pretrained = apply_weights(obj, weights, trust_checkpoint, notes)
    # Without weights we cannot tell whether the function loaded any; assume it did.
    return describe_model(model, spec, pretrained=pretrained is not False, notes=notes)
