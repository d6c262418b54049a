"""Parameter-efficient adaptation: the parameters BitFit trains, and LoRA put on by peft.

- **BitFit** (Ben Zaken et al. 2022) trains only the biases; here also the affine
  parameters of the normalisation layers, which play the same role in vision
  backbones. :func:`bias_and_norm` picks them by name and module type.
- **LoRA** (Hu et al. 2022) adds a trainable low-rank update ``B A * alpha / r`` beside
  frozen weights. It is peft's (``pip install 'transfer-diagnose[peft]'``), imported only
  when a LoRA strategy runs. :func:`lora_targets` finds the ``nn.Linear`` and 2-D
  ``nn.Conv2d`` layers of the chosen blocks (a timm ViT's ``qkv``, ``proj``, ``fc1``,
  ``fc2``; a ResNet's convolutions); depthwise and grouped convolutions are left out,
  since a low-rank update of a per-channel filter saves nothing, and so are subclasses
  with their own forward, except 1x1 TensorFlow-style "same"-padding convolutions
  (which pad nothing): :func:`apply_lora` turns those into plain ``nn.Conv2d`` (the
  same parameters, the same function) so peft can build their update. An
  EfficientNet-Lite keeps its 1x1 expansions and projections, most of its weights.

Example:
    >>> targets = lora_targets(net, ["layer3", "layer4"], head="fc")
    >>> peft_model = apply_lora(net, targets, rank=8, alpha=16, head="fc")
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from pathlib import Path
from typing import Any

from torch import nn

from diagnose.core import Arg, UsageError, atomic_write_dir
from diagnose.models.groups import HEAD, module_groups

__all__ = [
    "ADAPTER_CONFIG",
    "LORA_EXTRA",
    "adapter_dir_for",
    "apply_lora",
    "bias_and_norm",
    "import_peft",
    "is_adapter_dir",
    "lora_targets",
    "peft_available",
    "plain_pointwise_convs",
    "save_adapter",
    "saved_targets",
]

LORA_EXTRA = "pip install 'transfer-diagnose[peft]'"
# The file peft writes beside the adapter weights; it marks an adapter directory.
ADAPTER_CONFIG = "adapter_config.json"


def import_peft() -> Any:
    """The ``peft`` module, or a one-line ImportError naming the extra that installs it."""
    try:
        import peft
    except ImportError:
        raise ImportError(f"The 'lora' strategy needs the peft library: {LORA_EXTRA}.") from None
    return peft


@functools.cache
def peft_available() -> bool:
    """Whether peft imports here (installed and importable: a broken install counts as
    missing, so LoRA is left out up front rather than failing row by row)."""
    try:
        import_peft()
    except ImportError:
        return False
    return True


def _is_norm(module: nn.Module) -> bool:
    # Covers BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm and timm's subclasses
    # (LayerNorm2d, BatchNormAct2d) as well as any custom "...Norm..." layer.
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
    return isinstance(module, norms) or "Norm" in type(module).__name__


def bias_and_norm(model: nn.Module, names: list[str]) -> list[str]:
    """The parameters BitFit trains among ``names``.

    Args:
        model: the network the names are of.
        names: qualified parameter names (one block's, say).

    Returns:
        Every bias (``bias``, and ``in_proj_bias``, ``q_bias``, ``v_bias``: attention's
        query biases matter most in the BitFit paper) and every parameter of a
        normalisation layer, in the order of ``names``.

    Example:
        >>> bias_and_norm(nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5)), ["0.weight", "0.bias", "1.weight"])
        ['0.bias', '1.weight']
    """
    modules = dict(model.named_modules())
    keep = []
    for name in names:
        owner, _, leaf = name.rpartition(".")
        if leaf == "bias" or leaf.endswith("_bias") or _is_norm(modules.get(owner, model)):
            keep.append(name)
    return keep


# Convolutions whose own forward only pads ("same" padding, TensorFlow style) before an
# ordinary convolution; a subclass that changes its weight in forward (weight
# standardisation) would not match a merged update, so it is never adapted.
_PADDING_ONLY = re.compile(r"Same|StaticSamePadding|DynamicSamePadding")


def _lora_supported(module: nn.Module, parent: nn.Module | None) -> bool:
    """A layer peft's LoRA update matches: a plain Linear (not one that
    ``nn.MultiheadAttention`` reads the weight of directly), or a 2-D convolution with one
    group, plain or, at 1x1 (which pads nothing), one that only pads."""
    if isinstance(module, nn.Linear):
        own = type(module).forward is nn.Linear.forward
        return own and not isinstance(parent, nn.MultiheadAttention)
    if not isinstance(module, nn.Conv2d) or module.groups != 1:
        return False
    return type(module) is nn.Conv2d or _pointwise_padding_only(module)


def _pointwise_padding_only(module: nn.Module) -> bool:
    """A 1x1 convolution subclass whose own forward only pads (nothing, at 1x1)."""
    return (
        isinstance(module, nn.Conv2d)
        and type(module) is not nn.Conv2d
        and bool(_PADDING_ONLY.search(type(module).__name__))
        and tuple(module.kernel_size) == (1, 1)
        and module.groups == 1
    )


def plain_pointwise_convs(model: nn.Module, names: list[str]) -> None:
    """Replace, in place, each 1x1 padding-only convolution among ``names`` by an ``nn.Conv2d`` with
    the same parameters (the same function at 1x1): peft builds an adapter's layers with
    the wrapped layer's own class, whose constructor such subclasses change."""
    modules = dict(model.named_modules())
    for name in names:
        m = modules[name]
        if not _pointwise_padding_only(m):
            continue
        plain = nn.Conv2d(m.in_channels, m.out_channels, 1, stride=m.stride,
                          bias=m.bias is not None, device=m.weight.device, dtype=m.weight.dtype)  # fmt: skip
        plain.weight, plain.bias = m.weight, m.bias  # the same Parameters: no copy
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, plain)


def lora_targets(
    model: nn.Module,
    blocks: list[str],
    head: str,
    *,
    adapted: list[str] | None = None,
    targets: list[str] | None = None,
) -> list[str]:
    """The qualified names of the layers LoRA adapts.

    Args:
        model: the network (with its head at ``head``).
        blocks: every block (parameter groups, as :func:`parameter_groups`).
        head: the head's name; the head is never adapted (it trains in full).
        adapted: the blocks whose layers are adapted (None: every block).
        targets: names or name suffixes (``"qkv"``, ``"mlp.fc1"``) of the layers to adapt
            within those blocks (None: every ``nn.Linear`` and 2-D ``nn.Conv2d``).

    Raises:
        ValueError: a target that names no supported layer of those blocks, or no layer found.
    """
    owners = module_groups(model, list(blocks), head)
    chosen = set(blocks if adapted is None else adapted)
    modules = dict(model.named_modules())
    pool = {
        name: m
        for name, m in modules.items()
        if owners.get(name) in chosen
        and owners.get(name) != HEAD
        and _lora_supported(m, modules.get(name.rpartition(".")[0]))
    }
    if targets is None:
        found = list(pool)
    else:
        found = []
        for t in targets:
            hits = [n for n in pool if n == t or n.endswith("." + t)]
            if not hits:
                close = difflib.get_close_matches(str(t), list(pool), n=3)
                hint = f" Close matches: {', '.join(close)}." if close else ""
                raise ValueError(
                    f"LoRA target {t!r} names no nn.Linear or 2-D nn.Conv2d in blocks "
                    f"{sorted(chosen)}.{hint} Pass names or suffixes of such layers."
                )
            found.extend(h for h in hits if h not in found)
    if not found:
        raise UsageError(
            f"No nn.Linear or 2-D nn.Conv2d layer in blocks {sorted(chosen)} for LoRA; "
            "pass the layers to adapt as ", Arg("lora_targets", "a,b"), ".",
        )  # fmt: skip
    return found


def apply_lora(model: nn.Module, targets: list[str], *, rank: int, alpha: float, head: str) -> Any:
    """Wrap ``model`` in a ``PeftModel`` with LoRA on exactly ``targets``.

    Args:
        model: the network; adapted in place (it stays the network inside the wrapper).
        targets: qualified names of the layers to adapt (:func:`lora_targets`).
        rank: the rank r of the update ``B A``.
        alpha: the scale numerator: the update is ``B A * alpha / r``.
        head: the head's qualified name: it trains in full and is saved with the adapter.

    Returns:
        The ``PeftModel``.

    Raises:
        ValueError: peft adapted other layers than ``targets`` (never silently).
    """
    peft = import_peft()
    plain_pointwise_convs(model, list(targets))
    config = peft.LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        # A string is matched whole (re.fullmatch): the names exactly, where a list
        # would also match every name that ends with one of them.
        target_modules="^(?:" + "|".join(re.escape(t) for t in targets) + ")$",
        lora_dropout=0.0,
        bias="none",
        modules_to_save=[head],
    )
    wrapped = peft.get_peft_model(model, config)
    done = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and n]
    if sorted(done) != sorted(targets):
        extra, missing = sorted(set(done) - set(targets)), sorted(set(targets) - set(done))
        raise UsageError(
            f"peft adapted other layers than asked: extra {extra[:3]}, missing {missing[:3]}; "
            "name the layers with ", Arg("lora_targets", "a,b"), ".",
        )  # fmt: skip
    return wrapped


def saved_targets(model: nn.Module, path: str | Path) -> list[str]:
    """The modules of ``model`` that the adapter saved at ``path`` adapts (its
    ``target_modules``: a pattern matched whole, or a list of names or name suffixes)."""
    wanted = json.loads((Path(path) / ADAPTER_CONFIG).read_text()).get("target_modules") or []
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(wanted, str):
        return [n for n in names if re.fullmatch(wanted, n)]
    return [n for n in names if any(n == t or n.endswith("." + t) for t in wanted)]


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory peft's ``save_pretrained`` wrote."""
    path = Path(path)
    if not (path / ADAPTER_CONFIG).is_file():
        return False
    try:
        json.loads((path / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return True


def adapter_dir_for(checkpoint: str | Path) -> Path:
    """Where the adapter of the merged checkpoint ``checkpoint`` is saved: ``lora.pt`` ->
    ``lora_adapter/``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}_adapter")


def save_adapter(peft_model: Any, path: str | Path) -> Path:
    """``peft_model.save_pretrained`` into ``path`` atomically
    (:func:`diagnose.core.atomic_write_dir`)."""

    def write(tmp: Path) -> None:
        peft_model.save_pretrained(str(tmp))

    return atomic_write_dir(write, path)
