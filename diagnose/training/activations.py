"""Caching activations so frozen parts of a network run once, not once per epoch.

- :func:`capture_head_inputs`: the head's input features, for training a new
  head on them (feature extraction, LP-FT's linear-probe stage).
- :class:`PrefixCache`: the output of a frozen prefix of blocks (``partial``).
  While it is active, the prefix's modules are swapped for stubs: the last
  one returns the cached activation of the current batch, the ones before it
  pass their input through. This is only sound for a chain-like forward, so
  it is verified on one batch (eval and train mode) against the full model,
  and refused with a reason otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from diagnose.core import autocast_context, autocast_dtype, is_cuda, to_device
from diagnose.models import replace_module
from diagnose.training.batches import iterate_batches
from diagnose.training.cost import count_train_step_flops
from diagnose.training.loop import Phase
from probes import logits_of

__all__ = [
    "DEFAULT_MAX_CACHE_BYTES",
    "PrefixCache",
    "build_prefix_cache",
    "capture_head_inputs",
]

DEFAULT_MAX_CACHE_BYTES = 2 * 1024**3


def _restore_modes(flags: list[tuple[nn.Module, bool]]) -> None:
    for module, flag in flags:
        module.training = flag


def capture_head_inputs(
    net: nn.Module,
    head: str,
    xs: Sequence[torch.Tensor],
    batch_size: int,
    device: torch.device,
    phase: Phase,
    memory_format: torch.memory_format | None = None,
) -> list[torch.Tensor]:
    """The (N, D) float32 input of module ``head`` for each tensor in ``xs``, on ``device``.

    One forward pass per tensor in eval mode without gradients (flags
    restored, the hook removed even on error). ``phase`` receives the FLOPs of
    one batch and the number of batches. The batches go in ``memory_format``
    (the layout ``net`` was put in; None: the device's default).
    """
    store: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple) -> None:
        store.append(args[0].detach().to(torch.float32, copy=True))

    def count(xb: torch.Tensor) -> None:
        if phase.flops_per_step is None:
            phase.flops_per_step = count_train_step_flops(lambda: net(xb))
        else:
            net(xb)

    flags = [(m, m.training) for m in net.modules()]
    handle = None
    out = []
    try:
        net.eval()
        with torch.no_grad(), autocast_context(device):
            for x in xs:
                for (xb,) in iterate_batches((x,), batch_size, None):
                    xb = to_device(xb, device, memory_format)
                    if handle is None:
                        handle = net.get_submodule(head).register_forward_pre_hook(hook)
                    count(xb)
                    phase.steps += 1
                feats = torch.cat(store) if store else torch.empty(0)
                store.clear()
                if feats.ndim != 2 or feats.shape[0] != x.shape[0]:
                    raise ValueError(
                        f"Training a head on cached features needs the input of {head!r} to be "
                        f"(N, D) with N = {x.shape[0]} (the head called once per forward pass); "
                        f"got shape {tuple(feats.shape)}."
                    )
                out.append(feats)
    finally:
        if handle is not None:
            handle.remove()
        _restore_modes(flags)
    return out


class _PassThrough(nn.Module):
    def forward(self, x: Any = None, *args: Any, **kwargs: Any) -> Any:
        return x


class _Cached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.value


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the wanted activation is stored."""


class PrefixCache:
    """Cached outputs of a frozen prefix and the module swap that uses them.

    Attributes:
        boundary: the module whose output is cached (the last prefix block,
            or its outermost frozen container).
        stubbed: the modules replaced while active (outermost only).
        cache: split name -> CPU tensor (N, ...) of boundary outputs.
    """

    def __init__(self, boundary: str, stubbed: list[str]):
        self.boundary, self.stubbed = boundary, stubbed
        self.cache: dict[str, torch.Tensor] = {}
        self._cached = _Cached()

    def set(self, value: torch.Tensor) -> None:
        """The boundary output the next forward pass will see (the current batch's rows)."""
        self._cached.value = value

    @contextmanager
    def active(self, net: nn.Module):
        """Swap the stubs into ``net``; the original modules are back on exit, always."""
        originals = {}
        try:
            for name in self.stubbed:
                originals[name] = replace_module(
                    net, name, self._cached if name == self.boundary else _PassThrough()
                )
            yield self
        finally:
            for name, module in originals.items():
                replace_module(net, name, module)
            self._cached.value = None


def _prefix_modules(
    owners: dict[str, str], prefix: set[str], last_block: str
) -> tuple[list[str], str] | str:
    """Outermost modules made only of prefix groups, and the one to cache; or a reason."""
    names = list(owners)
    pure = {n for n in names if owners[n] in prefix}
    for n in names:  # a container of anything outside the prefix cannot be stubbed
        if owners[n] not in prefix:
            parts = n.split(".")
            for k in range(1, len(parts)):
                pure.discard(".".join(parts[:k]))
    outer = [n for n in names if n in pure and not any(n.startswith(a + ".") for a in pure)]
    boundary = next((n for n in outer if last_block == n or last_block.startswith(n + ".")), None)
    if boundary is None:
        return f"the last frozen block {last_block!r} shares a container with trained modules"
    return outer, boundary


def build_prefix_cache(
    net: nn.Module,
    *,
    owners: dict[str, str],
    blocks: list[str],
    trainable: list[str],
    bn: str,
    splits: dict[str, torch.Tensor],
    batch_size: int,
    device: torch.device,
    set_train_modes: Callable[[], None],
    phase: Phase,
    max_bytes: int = DEFAULT_MAX_CACHE_BYTES,
) -> tuple[PrefixCache | None, str]:
    """Cache the frozen prefix's output for ``splits`` if that is safe; else (None, reason).

    The prefix is every block before the first trained one (with the modules
    assigned to them by ``module_groups``). Refused when: no block is frozen
    before the first trained one; ``bn="train"`` (the prefix's statistics
    change every pass); the prefix holds dropout (random per pass); the cache
    would exceed ``max_bytes``; or, on one batch, the stubbed model's output
    differs from the full model's in eval or train mode (a forward that is
    not a chain, e.g. a skip connection out of the prefix).
    """
    first = (
        min(blocks.index(b) for b in trainable if b in blocks)
        if any(b in blocks for b in trainable)
        else 0
    )
    prefix = set(blocks[:first])
    refused = _refusal(net, owners, prefix, bn)
    found = refused or _prefix_modules(owners, prefix, blocks[first - 1])
    if isinstance(found, str):
        return None, found
    stubbed, boundary = found
    pc = PrefixCache(boundary, stubbed)
    reason = _fill(net, pc, splits, batch_size, device, phase, max_bytes) or _verify(
        net, pc, splits, batch_size, device, set_train_modes
    )
    if reason:
        return None, reason
    return (
        pc,
        f"frozen prefix {sorted(prefix, key=blocks.index)} cached once (no augmentation); verified on one batch",
    )


def _refusal(net: nn.Module, owners: dict[str, str], prefix: set[str], bn: str) -> str | None:
    """Why the frozen ``prefix`` cannot be cached, before running anything (None: it may)."""
    if not prefix:
        return "no frozen prefix: the first block trains"
    if bn == "train":
        return "bn='train' updates the frozen prefix's BatchNorm statistics on every pass"
    modules = dict(net.named_modules())
    drop = [
        n
        for n, g in owners.items()
        if g in prefix and isinstance(modules[n], nn.modules.dropout._DropoutNd)
    ]
    if drop:
        return f"the frozen prefix holds dropout ({drop[0]}), which is random on every pass"
    return None


def _fill(net, pc: PrefixCache, splits, batch_size, device, phase: Phase, max_bytes) -> str | None:
    """Run every split up to ``pc.boundary`` and keep its output in ``pc.cache`` (in eval
    mode, flags restored); why it could not be done, or None."""
    store: list[torch.Tensor] = []
    boundary = pc.boundary
    sizes = {k: int(v.shape[0]) for k, v in splits.items()}

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"{boundary!r} returned {type(output).__name__}, not a tensor")
        store.append(output.detach().to("cpu", copy=True))
        raise _Stop

    def run(xb: torch.Tensor) -> None:
        try:
            net(xb)
        except _Stop:
            pass

    flags = [(m, m.training) for m in net.modules()]
    handle = net.get_submodule(boundary).register_forward_hook(hook)
    try:
        net.eval()
        with torch.no_grad(), autocast_context(device):
            for split, x in splits.items():
                for (xb,) in iterate_batches((x,), batch_size, None):
                    xb = to_device(xb, device)
                    if phase.flops_per_step is None:
                        phase.flops_per_step = count_train_step_flops(lambda xb=xb: run(xb))
                    else:
                        run(xb)
                    phase.steps += 1
                    if not store:
                        return f"{boundary!r} is not called by the model's forward pass"
                    need = store[0][0].numel() * store[0].element_size() * sum(sizes.values())
                    if need > max_bytes:
                        return (
                            f"the prefix activations would take {need / 2**30:.2f} GiB "
                            f"(limit {max_bytes / 2**30:.2f} GiB)"
                        )
                cached = torch.cat(store)
                pc.cache[split] = cached.pin_memory() if is_cuda(device) else cached
                store.clear()
    except TypeError as exc:
        return str(exc)
    finally:
        handle.remove()
        _restore_modes(flags)
    return None


def _logits_or_none(output: Any) -> torch.Tensor | None:
    try:
        return logits_of(output).float()
    except TypeError:
        return None


def _verify(
    net: nn.Module,
    pc: PrefixCache,
    splits: dict[str, torch.Tensor],
    batch_size: int,
    device: torch.device,
    set_train_modes: Callable[[], None],
) -> str | None:
    split = next(iter(splits))
    b = min(batch_size, int(splits[split].shape[0]))
    xb = to_device(splits[split][:b], device)
    cb = to_device(pc.cache[split][:b], device)
    buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
    flags = [(m, m.training) for m in net.modules()]
    devices = [device.index or 0] if is_cuda(device) else []
    tol = 3e-2 if autocast_dtype(device) is not None else 1e-4
    try:
        for mode in ("eval", "train"):
            outs = []
            for stubbed in (False, True):
                net.eval() if mode == "eval" else set_train_modes()
                with (
                    torch.random.fork_rng(devices=devices),
                    torch.no_grad(),
                    autocast_context(device),
                ):
                    torch.manual_seed(0)  # same dropout masks after the prefix in both runs
                    if stubbed:
                        with pc.active(net):
                            pc.set(cb)
                            outs.append(net(xb))
                    else:
                        outs.append(net(xb))
            full, stub = (_logits_or_none(o) for o in outs)
            if (
                not isinstance(full, torch.Tensor)
                or not isinstance(stub, torch.Tensor)
                or full.shape != stub.shape
            ):
                return f"the model's output with the cached prefix does not match the full model ({mode} mode)"
            scale = float(full.abs().max()) if full.numel() else 0.0
            diff = float((full - stub).abs().max()) if full.numel() else 0.0
            if not diff <= tol * max(scale, 1.0):
                return (
                    f"the model's output with the cached prefix differs from the full model by "
                    f"{diff:.3g} on one batch ({mode} mode): its forward is not a chain of the blocks"
                )
    except Exception as exc:  # any failure of the stubbed forward means: not a chain
        return f"the model's forward does not run with the prefix replaced ({type(exc).__name__}: {exc})"
    finally:
        with torch.no_grad():
            for k, v in net.named_buffers():
                v.copy_(buffers[k])
        _restore_modes(flags)
    return None
