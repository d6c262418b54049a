"""The forward hooks of :func:`probes.capture`: one pooled copy of each chosen module's output.

:class:`PooledHooks` owns the hook state that capture's loop reads: the pooled
outputs of the current batch, how often each hooked module ran in the last
forward pass, each layer's pooled width and its random projection (timm's
``FeatureHooks`` keeps its hook state the same way). The loop starts a batch,
runs the model, checks the call counts and takes the pooled outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from probes._pooling import pool_activation, projection_matrix
from probes._store import width_error


class PooledHooks:
    """Forward hooks that pool each named module's output, once per forward pass.

    Args:
        targets: ``(name, module)`` pairs to hook, in forward order.
        pool, token_pool: how conv maps and token sequences are pooled
            (:func:`probes._pooling.pool_activation`).
        max_dim: pooled widths above this are randomly projected down to it
            (None: never), with a matrix drawn once per layer from ``seed``.
    """

    def __init__(
        self,
        targets: list[tuple[str, nn.Module]],
        *,
        pool: Any,
        token_pool: str,
        max_dim: int | None,
        seed: int,
    ):
        self.names = [name for name, _ in targets]
        self._modules = dict(targets)
        self.pool, self.token_pool, self.max_dim, self.seed = pool, token_pool, max_dim, seed
        self.stores: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        self.calls: dict[str, int] = dict.fromkeys(self.names, 0)
        self.widths: dict[str, int] = {}
        self.matrices: dict[str, torch.Tensor] = {}
        self.projected: dict[str, int] = {}  # layer -> its width before projection
        self.batch = 0
        self._handles: dict[str, Any] = {}

    def attach(self) -> None:
        """Register one forward hook per layer."""
        for name in self.names:
            self._handles[name] = self._modules[name].register_forward_hook(self._hook(name))

    def remove(self) -> None:
        """Remove every hook (safe to call twice)."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()

    def start(self, batch_size: int) -> None:
        """Before a forward pass of ``batch_size`` examples: reset the call counts."""
        self.batch = int(batch_size)
        self.calls.update(dict.fromkeys(self.calls, 0))

    def drop(self, name: str) -> None:
        """Stop capturing ``name`` (a discovered module the forward never runs)."""
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.remove()
        del self.calls[name], self.stores[name]
        self.names.remove(name)

    def marks(self) -> dict[str, int]:
        """How many pooled outputs each layer holds now (see :meth:`rollback`)."""
        return {name: len(store) for name, store in self.stores.items()}

    def rollback(self, marks: dict[str, int]) -> None:
        """Forget the pooled outputs added since ``marks`` (a forward that ran out of memory)."""
        for name, mark in marks.items():
            del self.stores[name][mark:]

    def take(self) -> dict[str, list[torch.Tensor]]:
        """The pooled outputs of the batch so far, per layer; the stores start empty again."""
        out = {name: self.stores[name] for name in self.names}
        self.stores = {name: [] for name in self.names}
        return out

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, out: Any) -> None:
            self.calls[name] += 1
            if self.calls[name] > 1:
                return  # reported after the forward, with the full count
            pooled = pool_activation(
                out, layer=name, batch=self.batch, pool=self.pool, token_pool=self.token_pool
            )
            dim = int(pooled.shape[1])
            # The raw pooled width must hold for every batch, before any projection:
            # checked after projecting, a batch of another width could slip through.
            first = self.widths.setdefault(name, dim)
            if dim != first:
                raise width_error(name, [first, dim])
            if self.max_dim is not None and dim > self.max_dim:
                if name not in self.matrices:
                    self.matrices[name] = projection_matrix(
                        name, dim, int(self.max_dim), self.seed, pooled.device
                    )
                    self.projected[name] = dim
                pooled = pooled @ self.matrices[name]
            # A copy, always: a CPU tensor's .to("cpu") shares storage, and an in-place
            # op later in the forward (ReLU(inplace=True)) would overwrite it.
            self.stores[name].append(pooled.detach().to("cpu", dtype=torch.float32, copy=True))

        return hook
