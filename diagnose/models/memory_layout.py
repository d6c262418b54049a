"""The memory layout a network runs in: measured once per architecture, then kept on disk.

NCHW and channels-last differ only by float rounding, but which is faster
depends on the network and the machine: on the CPU, depthwise networks and
small convolutional ones run faster channels-last, while ResNets can run
slower (benchmarks/bench_layout.py measures them; the figures are in the README).
So the layout is measured, and the decision is kept where results stay the
same whatever the machine is doing:

- inputs that are not 4-D floating images, a model without 2-D convolutions
  or with lazy parameters: NCHW, without a trial;
- on CUDA: channels-last (tensor-core convolutions), without a trial;
- otherwise, the first time an architecture runs at an input shape on this
  machine (per kind: inference or training), a copy is checked on two examples
  (a forward that raises or differs channels-last keeps NCHW) and then timed
  in both layouts on the sample batch; channels-last is kept when it takes at
  most :data:`MARGIN` of the NCHW time. The decision is written to
  ``layouts.json`` in the cache directory (:func:`diagnose.models.resolve_cache_dir`)
  and every later run, in this process or another, reads it: never a timing
  again, never the thread count, so the same inputs and seed give the same
  numbers however busy the machine is. Deleting the file measures again.

Example:
    >>> layout = choose_layout(net, x[:32], torch.device("cpu"), training=True)
    >>> net = net.to(memory_format=layout.memory_format)
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diagnose.core import atomic_write_text, is_cuda
from diagnose.models.cache import resolve_cache_dir
from probes import logits_of

__all__ = ["MARGIN", "TORCH_FORMATS", "Layout", "choose_layout", "forget_layouts", "layouts_file"]

#: The layouts by name, as results.json and ``probes.capture`` say them, and torch's format.
TORCH_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}

# Channels-last must take at most this share of the NCHW time: a gain within the timing
# noise of a few batches keeps the layout the model was built in.
MARGIN = 0.9
# The check's tolerance is semantic, not a rounding one: the layouts differ by float
# rounding (about 1e-6 of the output's scale in float32), while a forward that depends
# on the layout differs by O(1). 1% of the largest output separates the two for float32,
# float16 and bfloat16 alike.
_AGREE = 1e-2
# The timed sequence: each layout's first call pays its one-off kernel set-up, so the
# best of the later ones counts.
_SEQUENCE = ("contiguous", "channels_last", "contiguous", "channels_last", "channels_last",
             "contiguous")  # fmt: skip

_kept: dict[str, Layout] = {}  # this process's reads of the file, and its decisions


@dataclass(frozen=True)
class Layout:
    """The memory format a network runs in, and why.

    Attributes:
        name: ``"contiguous"`` (NCHW) or ``"channels_last"``.
        reason: one line: why (the measurement, or why none ran).
    """

    name: str
    reason: str

    @property
    def memory_format(self) -> torch.memory_format:
        """The torch memory format of :attr:`name`."""
        return TORCH_FORMATS[self.name]

    def describe(self) -> str:
        """One line for a report: the layout and, in brackets, why."""
        return f"{self.name} ({self.reason})"

    def to_dict(self) -> dict:
        """Plain JSON fields (``memory_format``, ``reason``)."""
        return {"memory_format": self.name, "reason": self.reason}


def forget_layouts() -> None:
    """Forget this process's decisions (the next choice reads the file again)."""
    _kept.clear()


def layouts_file() -> Path:
    """Where the decisions are kept: ``layouts.json`` in the cache directory."""
    return resolve_cache_dir() / "layouts.json"


def _fixed(model: nn.Module, x: torch.Tensor, device) -> Layout | None:
    """The layout that needs no trial, or None when it is to be measured."""
    if x.ndim != 4 or not x.is_floating_point():
        return Layout("contiguous", "inputs are not 4-D floating images")
    if any(nn.parameter.is_lazy(p) for p in model.parameters()):
        return Layout("contiguous", "the model has uninitialised (lazy) parameters")
    if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return Layout("contiguous", "the model has no 2-D convolutions")
    if is_cuda(device):
        return Layout("channels_last", "CUDA: tensor-core convolutions")
    return None


def _key(model: nn.Module, x: torch.Tensor, device, training: bool) -> str:
    """The architecture (class, parameter names and shapes), the input's shape and dtype,
    the device kind, the pass and the torch version: never the thread count."""
    cls = type(model)
    arch = repr([(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()])
    digest = hashlib.sha1(arch.encode()).hexdigest()[:16]
    kind = "training" if training else "inference"
    return (f"{cls.__module__}.{cls.__qualname__}/{digest}/{tuple(x.shape[1:])}/{x.dtype}/"
            f"{torch.device(device).type}/{kind}/torch {torch.__version__}")  # fmt: skip


def _read() -> dict:
    try:
        data = json.loads(layouts_file().read_text())
    except (OSError, ValueError):  # none yet, or damaged: measured again and rewritten
        return {}
    return data if isinstance(data, dict) else {}


def _keep(key: str, layout: Layout) -> None:
    """Add the decision to the file (read again first: another process may have added some)."""
    data = _read()
    data[key] = layout.to_dict()
    try:
        layouts_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(layouts_file(), json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:  # a read-only cache: the decision holds for this process only
        pass


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape or not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        return False
    scale = max(float(a.abs().max()), 1e-12) if a.numel() else 1.0
    return not a.numel() or float((a - b).abs().max()) <= _AGREE * scale


def _step(net: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
    """One pass: a forward without gradients, or a forward and backward."""
    if not training:
        with torch.no_grad():
            return logits_of(net(x))
    out = logits_of(net(x))
    out.float().sum().backward()
    net.zero_grad(set_to_none=True)
    return out.detach()


def _check(net: nn.Module, x: torch.Tensor, training: bool) -> str | None:
    """None when channels-last runs ``net`` (a copy) on two examples as NCHW does;
    else why it keeps NCHW. ``net`` is left channels-last."""
    small = x[:2]
    try:
        ref = _step(net.eval(), small, False)
    except Exception as exc:  # the run itself reports the error in its own words
        return f"the model's forward raised {type(exc).__name__}"
    net = net.to(memory_format=torch.channels_last)
    small = small.contiguous(memory_format=torch.channels_last)
    try:
        out = _step(net, small, False)
        if training:
            _step(net.train(), small, True)
    except Exception as exc:  # e.g. .view() on a channels-last activation
        return f"a channels-last {'step' if training else 'forward'} raised {type(exc).__name__}"
    return None if _agree(ref, out) else "channels-last outputs differed from NCHW ones"


def _measure(net: nn.Module, x: torch.Tensor, training: bool) -> Layout:
    """Check, then time ``net`` (a copy, changed here) on ``x`` in both layouts."""
    for p in net.parameters():  # a frozen backbone still times (and checks) its backward
        p.requires_grad_(True)
    why = _check(net, x, training)
    if why is not None:
        return Layout("contiguous", f"{why}; kept NCHW")
    net.train(training)
    times: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
    for name in _SEQUENCE:
        fmt = TORCH_FORMATS[name]
        net, xb = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
        start = time.perf_counter()
        _step(net, xb, training)  # on the CPU: CUDA never gets here (_fixed)
        times[name].append(time.perf_counter() - start)
    nchw, cl = min(times["contiguous"][1:]), min(times["channels_last"][1:])
    what = "a training step" if training else "a forward"
    timing = f"{what} of {len(x)} took {1000 * nchw:.0f} ms NCHW, {1000 * cl:.0f} ms channels-last"
    if cl <= MARGIN * nchw:
        return Layout("channels_last", f"measured once on this machine: {timing}")
    return Layout("contiguous", f"measured once on this machine: {timing}; kept NCHW")


def choose_layout(model: nn.Module, x: torch.Tensor, device, *, training: bool) -> Layout:
    """The layout ``model`` runs in on batches like ``x`` on ``device`` (module docstring).

    Args:
        model: the network (left unchanged: the check and the timing run on a copy).
        x: a sample batch (the timing runs on it; a batch of the size the run uses
            times what the run does); floating inputs are cast to the dtype of the
            model's first floating parameter, as the run's batches are.
        device: where the network runs.
        training: for training steps (True) or inference passes (False).

    Returns:
        The layout and why: the rule that needs no trial, or the measurement kept in
        :func:`layouts_file`.
    """
    floats = [p for p in model.parameters() if p.is_floating_point()]
    if floats and x.is_floating_point():
        x = x.to(floats[0].dtype)
    fixed = _fixed(model, x, device)
    if fixed is not None:
        return fixed
    key = _key(model, x, device, training)
    if key not in _kept:
        stored = _read().get(key)
        if isinstance(stored, dict) and stored.get("memory_format") in TORCH_FORMATS:
            _kept[key] = Layout(stored["memory_format"], str(stored.get("reason")))
        else:
            net = copy.deepcopy(model).to(device)
            _kept[key] = _measure(net, x.to(device), training)
            _keep(key, _kept[key])
    return _kept[key]
