"""Parameter-efficient adaptation: the parameters BitFit trains, and LoRA put on by peft.

- **BitFit** (Ben Zaken et al. 2022) trains only the biases; here also the affine
  parameters of the normalisation layers, which play the same role in vision
  backbones. :func:`bias_and_norm` picks them by name and module type.
- **LoRA** (Hu et al. 2022) adds a trainable low-rank update ``B A * alpha / r`` beside
  frozen weights. It is peft's (``pip install 'transfer-diagnose[peft]'``), imported only
  when a LoRA strategy runs. :func:`lora_targets` finds the ``nn.Linear`` and 2-D
  ``nn.Conv2d`` layers of the chosen blocks (a timm ViT's ``qkv``, ``proj``, ``fc1``,
  ``fc2``; a ResNet's convolutions); depthwise and grouped convolutions are left out,
  since a low-rank update of a per-channel filter saves nothing, and so are larger
  kernels of subclasses with their own forward (TensorFlow-style "same" padding),
  whose output peft's update would not match (an EfficientNet-Lite keeps its 1x1
  expansions and projections, most of its weights).

Example:
    >>> targets = lora_targets(net, ["layer3", "layer4"], head="fc")
    >>> peft_model = apply_lora(net, targets, rank=8, alpha=16, head="fc")
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

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
    "save_adapter",
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


def _is_norm(module: nn.Module) -> bool:
    # Covers BatchNorm, LayerNorm, GroupNorm, InstanceNorm, RMSNorm and timm's subclasses
    # (LayerNorm2d, BatchNormAct2d) as well as any custom "...Norm..." layer.
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or (
        "Norm" in type(module).__name__
    )


def bias_and_norm(model: nn.Module, names: list[str]) -> list[str]:
    """The names among ``names`` (parameters of ``model``) that BitFit trains: every bias,
    and the parameters of normalisation layers."""
    modules = dict(model.named_modules())
    keep = []
    for name in names:
        owner, _, leaf = name.rpartition(".")
        if leaf == "bias" or _is_norm(modules.get(owner, model)):
            keep.append(name)
    return keep


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return type(module).forward is nn.Linear.forward
    if not isinstance(module, nn.Conv2d) or module.groups != 1:
        return False
    # A subclass with its own forward (TensorFlow-style "same" padding, applied before it
    # convolves) feeds peft's update an unpadded input: only a 1x1 kernel, which pads
    # nothing, still matches the layer's output.
    return type(module).forward is nn.Conv2d.forward or tuple(module.kernel_size) == (1, 1)


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
    pool = {
        name: m
        for name, m in model.named_modules()
        if owners.get(name) in chosen and owners.get(name) != HEAD and _supported(m)
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
        raise ValueError(
            f"No nn.Linear or 2-D nn.Conv2d layer in blocks {sorted(chosen)} for LoRA; "
            "pass the layers to adapt as lora_targets (--lora-targets)."
        )
    return found


def apply_lora(model: nn.Module, targets: list[str], *, rank: int, alpha: float, head: str):
    """``model`` wrapped in a ``PeftModel`` with LoRA on ``targets`` (in place: ``model`` is
    the wrapped network); the head at ``head`` trains in full and is saved with the adapter."""
    peft = import_peft()
    config = peft.LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        target_modules=list(targets),
        lora_dropout=0.0,
        bias="none",
        modules_to_save=[head],
    )
    return peft.get_peft_model(model, config)


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
    """``peft_model.save_pretrained`` into ``path`` atomically: written beside it, then
    swapped in, so a crash leaves the previous adapter (or none), never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = None
    try:
        peft_model.save_pretrained(str(tmp))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path
