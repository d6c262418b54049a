"""The memory layout a network runs in: decided from its architecture, never from a timing.

A layout is a speed choice (NCHW and channels-last differ only by float
rounding), so it must not make results depend on the machine: it is decided
from the architecture, the input's shape and the device, never from a timing,
the thread count or the load, and the same inputs and seed give the same
numbers however busy the machine is. The rule:

- inputs that are not 4-D floating images, or a model without 2-D
  convolutions: NCHW;
- otherwise channels-last, for inference and training alike: tensor-core
  convolutions on CUDA, and oneDNN's on the CPU, where benchmarks/bench_layout.py
  finds it faster or tied on every network it times but ResNets, whose two
  layouts trade places from run to run (the figures are in the README).

A channels-last pick is then checked once per architecture and input shape on
two examples: a model whose forward raises, or whose outputs differ, in
channels-last (a ``.view()`` of an activation, raw strides) keeps NCHW.

Example:
    >>> layout = choose_layout(net, x[:32], torch.device("cpu"), training=True)
    >>> net = net.to(memory_format=layout.memory_format)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from diagnose.core import is_cuda
from probes import logits_of

__all__ = ["Layout", "choose_layout", "forget_layouts"]

# The check's tolerance is semantic, not a rounding one: the layouts differ by float
# rounding (about 1e-6 of the output's scale in float32), while a forward that depends
# on the layout differs by O(1). 1% of the largest output separates the two for float32,
# float16 and bfloat16 alike.
_AGREE = 1e-2

_checked: dict[tuple, str | None] = {}


@dataclass(frozen=True)
class Layout:
    """The memory format a network runs in, and why.

    Attributes:
        name: ``"contiguous"`` (NCHW) or ``"channels_last"``.
        reason: one line: the rule that decided it.
    """

    name: str
    reason: str

    @property
    def memory_format(self) -> torch.memory_format:
        """The torch memory format of :attr:`name`."""
        return torch.channels_last if self.name == "channels_last" else torch.contiguous_format

    def describe(self) -> str:
        """One line for a report: the layout and, in brackets, why."""
        return f"{self.name} ({self.reason})"

    def to_dict(self) -> dict:
        """Plain JSON fields (``memory_format``, ``reason``)."""
        return {"memory_format": self.name, "reason": self.reason}


def forget_layouts() -> None:
    """Drop the checks kept for this process (the next choice checks again)."""
    _checked.clear()


def _rule(model: nn.Module, x: torch.Tensor, device) -> Layout:
    """The layout the rule (module docstring) gives, before the check."""
    if x.ndim != 4 or not x.is_floating_point():
        return Layout("contiguous", "inputs are not 4-D floating images")
    if any(nn.parameter.is_lazy(p) for p in model.parameters()):
        return Layout("contiguous", "the model has uninitialised (lazy) parameters")
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return Layout("contiguous", "the model has no 2-D convolutions")
    if is_cuda(device):
        return Layout("channels_last", "CUDA: tensor-core convolutions")
    return Layout("channels_last", "CPU: oneDNN convolutions")


def _key(model: nn.Module, x: torch.Tensor, device, training: bool) -> tuple:
    cls = type(model)
    arch = tuple((n, tuple(p.shape), p.dtype) for n, p in model.named_parameters())
    return (cls.__module__, cls.__qualname__, arch, tuple(x.shape[1:]), x.dtype,
            torch.device(device).type, training)  # fmt: skip


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape or not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return False
    scale = max(float(a.abs().max()), 1e-12) if a.numel() else 1.0
    return not a.numel() or float((a - b).abs().max()) <= _AGREE * scale


def _check(model: nn.Module, x: torch.Tensor, device, training: bool) -> str | None:
    """None when channels-last runs ``model`` on two examples of ``x`` as NCHW does
    (and, for ``training``, a backward runs); else why it keeps NCHW. On a copy."""
    net = copy.deepcopy(model).to(device).eval()
    small = x[:2].to(device)
    try:
        with torch.no_grad():
            ref = logits_of(net(small))
    except Exception as exc:  # the run itself reports the error in its own words
        return f"the model's forward raised {type(exc).__name__}"
    net = net.to(memory_format=torch.channels_last)
    small = small.contiguous(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            out = logits_of(net(small))
        if training:
            net.train()
            with torch.enable_grad():
                logits_of(net(small)).float().sum().backward()
    except Exception as exc:  # e.g. .view() on a channels-last activation
        return f"a channels-last {'step' if training else 'forward'} raised {type(exc).__name__}"
    if not _agree(ref, out):
        return "channels-last outputs differed from NCHW ones"
    return None


def choose_layout(model: nn.Module, x: torch.Tensor, device, *, training: bool) -> Layout:
    """The layout ``model`` runs in on batches like ``x`` on ``device`` (module docstring).

    Args:
        model: the network (left unchanged: the check runs on a copy).
        x: a sample batch (two examples are enough), in the dtype the model runs in.
        device: where the network runs.
        training: for training steps (True) or inference passes (False).

    Returns:
        The layout and the rule, or the check, that decided it.
    """
    layout = _rule(model, x, device)
    if layout.name == "contiguous":
        return layout
    key = _key(model, x, device, training)
    if key not in _checked:
        _checked[key] = _check(model, x, device, training)
    why = _checked[key]
    return layout if why is None else Layout("contiguous", f"{why}; kept NCHW")
