"""The memory layout a network trains in: measured once per architecture and input shape.

On CUDA every network trains channels-last (tensor-core convolutions). On the CPU
it depends on the network: depthwise-separable networks (EfficientNet, MobileNet)
train markedly faster channels-last, while a ResNet trains slower. So the first
training run of an architecture at an input shape times a few steps of SGD on a
throwaway copy, NCHW and channels-last in turn on the same batch, and keeps the
faster for the process (channels-last must win by :data:`LAYOUT_MARGIN`). The decision is
keyed by the architecture (class and parameter shapes) and the input's shape,
dtype and device; never by the thread count or the machine's load, so one run
trains every strategy in one layout. The layouts differ only by float rounding.

Example:
    >>> choice = train_layout(net, x[:32], y[:32], torch.device("cpu"))
    >>> net = net.to(memory_format=choice.memory_format)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diagnose.core import is_cuda
from diagnose.models import replace_module
from probes import logits_of

__all__ = ["LAYOUT_MARGIN", "TrainLayout", "forget_train_layouts", "run_layout", "train_layout"]

# Channels-last must take at most this fraction of the NCHW step time: a gain within
# the timing noise of a few steps keeps the layout the model was built in.
LAYOUT_MARGIN = 0.9
# The timed sequence: each layout's first step pays its one-off kernel set-up, so the
# best of the later ones counts.
_SEQUENCE = ("contiguous", "channels_last", "contiguous", "channels_last", "channels_last",
             "contiguous")  # fmt: skip

_decisions: dict[tuple, TrainLayout] = {}


@dataclass(frozen=True)
class TrainLayout:
    """The memory format fine-tuning runs in, and why.

    Attributes:
        name: ``"contiguous"`` (NCHW) or ``"channels_last"``.
        reason: one line: measured (with the step times), or why no trial ran.
        speedup: NCHW step time over channels-last step time (None without a trial).
    """

    name: str
    reason: str
    speedup: float | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        """The torch memory format of :attr:`name`."""
        return torch.channels_last if self.name == "channels_last" else torch.contiguous_format

    def to_dict(self) -> dict:
        """Plain JSON fields."""
        speedup = None if self.speedup is None else round(float(self.speedup), 3)
        return {"memory_format": self.name, "reason": self.reason, "speedup": speedup}


def forget_train_layouts() -> None:
    """Drop every decision kept for this process (the next run measures again)."""
    _decisions.clear()


def _key(model: nn.Module, x: torch.Tensor, device: torch.device) -> tuple:
    cls = type(model)
    arch = tuple((n, tuple(p.shape)) for n, p in model.named_parameters())
    return (cls.__module__, cls.__qualname__, arch, tuple(x.shape[1:]), x.dtype, str(device))


def train_layout(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    *,
    own_copy: bool = False,
) -> TrainLayout:
    """The layout ``model`` trains fastest in on batches like ``(x, y)`` (CPU tensors).

    ``model`` is left unchanged (the trial trains a copy; ``own_copy``: ``model`` is
    already one, which the trial may change). Inputs that are not 4-D floating
    images, or a model without 4-D weights, keep NCHW without a trial; so does a
    model whose trial step fails (its training then reports the error itself).
    """
    if is_cuda(device):
        return TrainLayout("channels_last", "CUDA: tensor-core convolutions")
    if x.ndim != 4 or not x.is_floating_point():
        return TrainLayout("contiguous", "inputs are not 4-D floating images")
    if not any(p.ndim == 4 for p in model.parameters()):
        return TrainLayout("contiguous", "the model has no 4-D weights (no 2-D convolutions)")
    key = _key(model, x, device)
    if key not in _decisions:
        _decisions[key] = _measure(model if own_copy else copy.deepcopy(model), x, y, device)
    return _decisions[key]


def run_layout(
    model: nn.Module, head: str, x: torch.Tensor, y: torch.Tensor, classes: int, device
) -> TrainLayout:
    """:func:`train_layout` of ``model`` under a new ``classes``-way head at ``head`` (as
    every strategy trains it), on the batch ``(x, y)``: one decision for a whole run,
    which its :class:`~diagnose.training.TrainConfig` then carries to every strategy."""
    if is_cuda(device):
        return train_layout(model, x, y, device)  # decided without a trial: no copy
    in_features = getattr(model.get_submodule(head), "in_features", None)
    if not isinstance(in_features, int):
        return TrainLayout("contiguous", f"the head {head!r} has no int 'in_features'")
    net = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        replace_module(net, head, nn.Linear(in_features, classes))
    return train_layout(net, x, y, device, own_copy=True)


def _measure(trial: nn.Module, x: torch.Tensor, y: torch.Tensor, device) -> TrainLayout:
    """Time SGD steps of ``trial`` (a copy, changed here) in each layout on ``(x, y)``."""
    trial = trial.to(device).train()
    for p in trial.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(trial.parameters(), lr=0.0)  # lr 0: the copy's weights stay put
    x, y = x.to(device), y.to(device)
    times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    try:
        for name in _SEQUENCE:
            fmt = torch.channels_last if name == "channels_last" else torch.contiguous_format
            trial = trial.to(memory_format=fmt)
            xb = x.contiguous(memory_format=fmt)
            start = time.perf_counter()
            F.cross_entropy(logits_of(trial(xb)).float(), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
    except Exception as exc:  # e.g. .view() on a channels-last activation: a user's model
        return TrainLayout("contiguous", f"a trial step raised {type(exc).__name__}; kept NCHW")
    nchw, cl = min(times["contiguous"][1:]), min(times["channels_last"][1:])
    timing = (
        f"a step on {len(y)} images took {1000 * nchw:.0f} ms in NCHW and {1000 * cl:.0f} ms "
        "channels-last"
    )
    if cl < LAYOUT_MARGIN * nchw:
        return TrainLayout("channels_last", f"measured: {timing}", nchw / cl)
    return TrainLayout("contiguous", f"measured: {timing}; kept NCHW", nchw / cl)
