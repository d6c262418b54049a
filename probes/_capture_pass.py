"""One capture pass's loop (private to :func:`probes.capture`).

:class:`CapturePass` feeds each batch through the model with the pooling hooks
attached, splits a batch that runs out of device memory in halves, keeps the
labels, and counts what it left out; :meth:`CapturePass.result` turns what the
sink holds into :class:`~probes._store.CapturedFeatures`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from probes._capture_data import split_batch, unreadable_note
from probes._forward import call_error, free_device_memory, is_out_of_memory, logits_of, oom_note
from probes._hooks import PooledHooks
from probes._layout import in_format
from probes._store import OUTPUT_KEY, CapturedFeatures, FeatureSink

__all__ = ["CapturePass"]


class CapturePass:
    """The state of one pass: hooks, feature sink, memory layout, labels and counts.

    Args:
        model: the model, in eval mode under ``no_grad`` while :meth:`add` runs.
        hooks: the pooling hooks on the captured layers (attached at the first batch).
        sink: where pooled batches go (memory or disk).
        memory_format: the layout of every batch (``"contiguous"`` or ``"channels_last"``;
            the weights are the caller's to swap).
        device: where inputs go; ``in_dtype`` the floating dtype they take.
        keep_output: keep the model's output (logits) per example too.
        auto: the layers were discovered: one the forward never runs is dropped, with
            a warning, instead of being an error.
    """

    def __init__(self, model: nn.Module, hooks: PooledHooks, sink: FeatureSink,
                 memory_format: str, device: torch.device, in_dtype, *, keep_output: bool,
                 auto: bool, batch_size: int):  # fmt: skip
        self.model, self.hooks, self.sink = model, hooks, sink
        self.memory_format = memory_format
        self.device, self.in_dtype = device, in_dtype
        self.keep_output, self.auto, self.batch_size = keep_output, auto, int(batch_size)
        self.labels: list[torch.Tensor] = []
        self.has_labels: bool | None = None
        self.skipped: list[tuple[int, str]] = []
        self.seen = 0
        self.oom = {"batches": 0, "of": 0, "smallest": self.batch_size, "fits": self.batch_size}
        self._attached = False

    def _forward_once(self, x: torch.Tensor, depth: int) -> torch.Tensor | None:
        """One forward pass; checks every hooked layer ran once; the CPU output if kept."""
        hooks = self.hooks
        hooks.start(x.shape[0])
        out = self.model(x)
        for name, count in list(hooks.calls.items()):
            if count == 0 and self.auto and self.seen == 0:
                # A discovered module the forward never runs (an auxiliary head).
                warnings.warn(
                    f"Layer {name!r} is not run by {type(self.model).__name__}'s forward "
                    "pass in eval mode; it is left out.",
                    stacklevel=5 + depth,  # the caller of probes.capture
                )
                hooks.drop(name)
            elif count != 1:
                raise call_error(name, count)
        if not self.keep_output:
            return None
        o = logits_of(out)
        return o.detach().reshape(o.shape[0], -1).to("cpu", torch.float32, copy=True)

    def _run_split(self, x: torch.Tensor, depth: int = 0) -> list:
        """Forward ``x``; on out-of-memory, drop its partial hook outputs and re-run halves."""
        marks = self.hooks.marks()
        try:
            return [(x.shape[0], self._forward_once(x, depth))]
        except Exception as exc:
            if not is_out_of_memory(exc) or x.shape[0] == 1:
                raise
        # Outside the except block, so the traceback no longer pins the failed
        # forward's tensors and the cache can actually be freed.
        self.hooks.rollback(marks)
        free_device_memory()
        half = (x.shape[0] + 1) // 2
        return self._run_split(x[:half], depth + 1) + self._run_split(x[half:], depth + 1)

    def _labels_of(self, y: torch.Tensor | None) -> None:
        """Every batch carries labels, or none does."""
        if self.has_labels is None:
            self.has_labels = y is not None
        elif self.has_labels != (y is not None):
            raise ValueError(
                "Some batches of 'data' carry integer labels and others do not; "
                "give every example a label (-1 for unlabelled) or none."
            )

    def add(self, batch, max_samples: int | None) -> None:
        """Pool one batch (``x`` or ``(x, y, ...)``), cut at ``max_samples``, into the sink."""
        x, y = split_batch(batch)
        if max_samples is not None and self.seen + x.shape[0] > max_samples:
            x = x[: max_samples - self.seen]
            y = None if y is None else y[: max_samples - self.seen]
        if x.shape[0] == 0:
            return
        self._labels_of(y)
        if x.is_floating_point() and self.in_dtype is not None:
            x = x.to(self.device, dtype=self.in_dtype)
        else:
            x = x.to(self.device)
        if not self._attached:
            self.hooks.attach()
            self._attached = True
        pieces = self._run_split(in_format(x, self.memory_format))
        self.oom["of"] += 1
        if len(pieces) > 1:
            sizes = [n for n, _ in pieces]
            self.oom["batches"] += 1
            self.oom["smallest"] = min(self.oom["smallest"], *sizes)
            self.oom["fits"] = min(self.oom["fits"], max(sizes))
        batch_pieces = self.hooks.take()
        if self.keep_output:
            batch_pieces[OUTPUT_KEY] = [o for _, o in pieces]
        self.sink.add(batch_pieces)  # in memory, or written to disk (over the budget)
        if y is not None:
            self.labels.append(y)
        self.seen += x.shape[0]

    def _notes(self, desc: str) -> list[str]:
        """What the pass left out or split, each also warned once."""
        notes = []
        oom = self.oom
        if oom["batches"]:
            notes.append(
                oom_note(oom["batches"], oom["of"], oom["smallest"], oom["fits"], self.batch_size)
            )
            warnings.warn(notes[-1], RuntimeWarning, stacklevel=4)
        if self.skipped:
            notes.append(unreadable_note(desc, self.skipped, self.seen))
            warnings.warn(notes[-1], RuntimeWarning, stacklevel=4)
        return notes

    def result(self, desc: str, pooling: dict) -> CapturedFeatures:
        """The features captured, after the checks that something was."""
        if self.seen == 0:
            if self.skipped:
                raise ValueError(
                    f"None of the {len(self.skipped)} examples of 'data' could be read; the "
                    f"first: {self.skipped[0][1]}"
                )
            raise ValueError("The 'data' parameter of capture holds no examples.")
        names = self.hooks.names
        if not names:
            raise ValueError("None of the discovered layers is run by the forward pass.")
        notes = self._notes(desc)
        try:
            arrays, store = self.sink.finish([*names, *([OUTPUT_KEY] if self.keep_output else [])])
        except BaseException:
            self.sink.abort()
            raise
        output = arrays.pop(OUTPUT_KEY, None)
        return CapturedFeatures(
            features=arrays,
            layers=list(names),
            labels=torch.cat(self.labels).numpy() if self.has_labels else None,
            output=output,
            projected=self.hooks.projected,
            pooling=pooling,
            warnings=notes,
            storage="memory" if store is None else "disk",
            store_dir=None if store is None else str(store.path),
            skipped=[index for index, _ in self.skipped],
            memory_format=self.memory_format,
            _store=store,
        )
