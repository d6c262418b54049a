"""Forgetting checks inside the user's own fine-tuning loop: :class:`ForgettingTracker`.

Most teams fine-tune in their own loop or in PyTorch Lightning. The tracker
plugs into any of them, torchmetrics-style: build it once from the pretrained
model and source data, call :meth:`ForgettingTracker.measure` on the model
being fine-tuned every so often, then :meth:`ForgettingTracker.save` the
history as results.json (kind ``"track"``) and its report::

    tracker = diagnose.ForgettingTracker(model, "demo:digits", max_forgetting=0.05)
    for step, (x, y) in enumerate(loader, 1):
        ...  # the user's own training step (the head may be swapped)
        if step % 50 == 0:
            tracker.measure(model, step=step)
    tracker.save("track/")  # results.json + report.html

Each measurement is one forward pass over ``n_images`` fixed held-out source
images (eval mode, no gradients, the model's train/eval flags restored) and
records the source accuracy through the ORIGINAL head (when the source has
labels matching it, even after the user replaced the head), the agreement
with the pretrained predictions, linear CKA per block against the pretrained
features, and the relative weight drift per block. Everything that can go
wrong with the inputs (images that do not fit the model, a head that does
not exist) fails at construction, never mid-training.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from torch import nn

import probes
from diagnose.core import SCHEMA_VERSION, environment, finite, jsonable, resolve_device
from diagnose.measure import ForgettingMeter, WeightDrift
from diagnose.models import parameter_groups, resolve_preprocessing
from diagnose.workflows.startup import as_domain, as_loaded, source_eval_set

__all__ = [
    "DEFAULT_TRACK_IMAGES",
    "ForgettingTracker",
]

# 64 held-out source images: the fewest at which agreement and CKA are stable to about
# +-0.03 on the demo (see measure.forgetting.suggest_source_samples, its floor), and one
# forward pass of a typical batch, so a measurement costs about a third of a training step.
DEFAULT_TRACK_IMAGES = 64


def _check_budget(max_forgetting: Any) -> float | None:
    if max_forgetting is None:
        return None
    value = finite(max_forgetting)
    if isinstance(max_forgetting, bool) or value is None or not 0 <= value <= 1:
        raise ValueError(
            "The 'max_forgetting' parameter of ForgettingTracker must be a fraction in [0, 1] "
            f"(source-accuracy drop, or 1 - agreement without labels). Got {max_forgetting!r}."
        )
    return value


def _use_labels(src, loaded, source_labels: bool | None, warnings: list[str]) -> bool | None:
    """Whether the source labels score the original head (None: match the class names)."""
    if source_labels is not None or src.labels is None:
        return source_labels
    n_head, n_src = loaded.num_source_classes, len(src.classes or [])
    if loaded.source_classes is None and n_src > 1 and n_head == n_src:
        # A module does not declare its classes: its head has as many outputs as the source
        # has classes, taken to be in the source's class order (sorted folder names).
        warnings.append(
            f"The model does not name its classes; its head's {n_head} outputs are taken to be "
            f"the source's classes in order ({', '.join(map(str, src.classes[:4]))}, ...) for "
            "source accuracy (source_labels=False measures label-free only)."
        )
        return True
    return None


def _check_args(n_images, source_labels) -> None:
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 2:
        raise ValueError(
            "The 'n_images' parameter of ForgettingTracker must be an int of at least 2 "
            f"(CKA needs two images). Got {n_images!r}."
        )
    if source_labels not in (None, True, False):
        raise TypeError(
            f"The 'source_labels' parameter must be None, True or False. Got {source_labels!r}."
        )


def _loaded_with_head(pretrained: Any, head: str | None, image_size: int | None):
    """The pretrained model loaded, with the classification head the tracker reads through."""
    loaded = as_loaded(pretrained, head=head, progress=False, image_size=image_size)
    if head is not None and head not in dict(loaded.model.named_modules()):
        raise ValueError(
            f"The 'head' parameter names {head!r}, which is not a module of "
            f"{type(loaded.model).__name__}; pass the qualified name of its classification "
            "head (see model.named_modules())."
        )
    if loaded.head is None:
        raise ValueError(
            "ForgettingTracker could not find the model's classification head; name it "
            "with the 'head' parameter."
        )
    return loaded


class ForgettingTracker:
    """Measures what fine-tuning makes a model forget, from inside any training loop.

    Args:
        pretrained: the pretrained model (an ``nn.Module`` with its original
            source head, or a :class:`diagnose.models.LoadedModel`). It is
            copied at construction, so the loop may fine-tune it in place.
        source: source data: a data spec (``"demo:digits"``, an ImageFolder
            path, ``module:function``) or a :class:`diagnose.data.Domain`.
        layers: block names whose CKA and drift are tracked, or ``"auto"``
            (:func:`probes.discover_layers`).
        head: qualified name of the original classification head (None: found
            by :func:`diagnose.models.find_head`).
        n_images: held-out source images per measurement (forward passes cost
            ``n_images`` image-passes each).
        max_forgetting: the forgetting budget, a fraction in [0, 1]: the
            source-accuracy drop through the original head, or
            ``1 - agreement`` when the source has no matching labels. A
            measurement above it records a warning and sets :attr:`exceeded`.
        image_size: resize the source images to this many pixels (None: the
            model's declared size, else their native size).
        normalize: ``"MEAN,STD"`` numbers, ``"none"``, or None for the model's own.
        source_labels: use the source labels for source accuracy: None
            matches them to the head automatically (by class names when the
            model declares them, else by the number of classes), True forces,
            False never uses them.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``: where the reference
            pass runs; :meth:`measure` runs where the measured model is.
        batch_size: images per forward pass.
        seed: picks the held-out source images.
        pool: how a block's token sequence (a Vision Transformer's) becomes one
            vector per image: ``"mean"`` over tokens or ``"cls"``.
    """

    def __init__(
        self,
        pretrained: Any,
        source: Any,
        *,
        layers: str | list[str] = "auto",
        head: str | None = None,
        n_images: int = DEFAULT_TRACK_IMAGES,
        max_forgetting: float | None = None,
        image_size: int | None = None,
        normalize: Any = None,
        source_labels: bool | None = None,
        device: str = "auto",
        batch_size: int = 64,
        seed: int = 0,
        pool: str = "mean",
    ):
        _check_args(n_images, source_labels)
        self.max_forgetting = _check_budget(max_forgetting)
        loaded = _loaded_with_head(pretrained, head, image_size)
        src = as_domain(source, "source")
        if src is None:
            raise ValueError("The 'source' parameter is required: forgetting is of the source.")
        self.warnings: list[str] = []
        dev = resolve_device(device)
        prep = resolve_preprocessing(loaded, [src], image_size, normalize)
        use_labels = _use_labels(src, loaded, source_labels, self.warnings)
        sx, sy = source_eval_set(
            src, loaded, prep, n=n_images, seed=seed, warnings=self.warnings, labels=use_labels
        )
        if sy is None:  # source_accuracy stays null in every measurement: say why once
            self.warnings.append(
                "Source accuracy is not measured: the source images have no labels for the "
                "original head's classes; forgetting is the disagreement with the pretrained "
                "model's predictions instead."
            )
        net = loaded.model
        blocks = probes.discover_layers(net) if layers == "auto" else list(layers)
        reference = copy.deepcopy(net).eval()
        try:
            self.meter = ForgettingMeter(
                reference,
                head=loaded.head,
                blocks=blocks,
                source_x=sx,
                source_y=sy,
                device=dev,
                batch_size=batch_size,
                token_pool=pool,
            )
        except (RuntimeError, ValueError) as exc:
            first = " ".join(str(exc).split())[:300]
            raise ValueError(
                f"The source images ({src.name}, preprocessed to {tuple(sx.shape[1:])}) do not "
                f"fit the model: {first}. Pass 'image_size' and 'normalize' for the input "
                "the model expects."
            ) from exc
        self.groups = {
            g: names
            for g, names in parameter_groups(reference, blocks, loaded.head).items()
            if g != "head"
        }
        self.reference_state = {
            n: p.detach().to("cpu", copy=True) for n, p in reference.named_parameters()
        }
        self.drift = WeightDrift(self.reference_state, self.groups)
        self.loaded, self.source, self.prep, self.blocks = loaded, src, prep, blocks
        self.n_images, self.seed = int(sx.shape[0]), seed
        self.history: list[dict] = []
        self.exceeded = False
        self.exceeded_at: int | None = None
        self._started = time.perf_counter()

    # ---------------------------------------------------------------------------- measuring
    @property
    def reference_source_accuracy(self) -> float | None:
        """The pretrained model's source accuracy on the tracked images (None without labels)."""
        return self.meter.reference_source_accuracy

    def measure(self, model: nn.Module, step: int | None = None) -> dict:
        """Measure ``model`` (being fine-tuned; its head may be new), record it and return it.

        Args:
            model: the model in training, on any device; its train/eval mode and
                gradients are left as they were.
            step: the training step (or epoch) to file the measurement under;
                None numbers the measurements 1, 2, 3, ...

        Returns:
            ``{"step", "source_accuracy", "source_accuracy_drop", "agreement",
            "forgetting", "forgetting_measure", "diverged", "cka": {block: 0..1},
            "drift": {block: ||w - w0|| / ||w0||}, "seconds", "over_budget"}``. A model
            whose source outputs are not finite is ``diverged``: total forgetting
            (``over_budget`` and :attr:`exceeded` set, one warning naming the step), and
            the numbers it cannot give are None.
        """
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"The 'model' parameter of measure must be an nn.Module. Got {type(model).__name__}."
            )
        if step is None:
            step = len(self.history) + 1
        t0 = time.perf_counter()
        summary = self.meter.measure(model)
        try:
            drift = self.drift(model)
        except ValueError as exc:
            drift = {}
            self._warn_once(f"Weight drift not measured: {exc}")
        acc, ref = summary["source_accuracy"], self.reference_source_accuracy
        drop = None if acc is None or ref is None else ref - acc
        agreement = summary["agreement"]
        forgetting = drop if drop is not None else (None if agreement is None else 1 - agreement)
        diverged = bool(summary.get("diverged"))
        if diverged:  # nothing of the source task survives: total forgetting, the alarm rings
            forgetting = ref if ref is not None else 1.0
            drop = ref  # every correct source prediction is lost (None without labels)
        record = {
            "step": int(step),
            "source_accuracy": acc,
            "source_accuracy_drop": drop,
            "agreement": agreement,
            "forgetting": forgetting,
            "forgetting_measure": "source_accuracy_drop" if drop is not None else "disagreement",
            "diverged": diverged,
            "cka": summary["cka"],
            "drift": drift,
            "seconds": time.perf_counter() - t0,
        }
        self.history.append(record)
        budget = self.max_forgetting
        record["over_budget"] = diverged or bool(
            budget is not None and forgetting is not None and forgetting > budget
        )
        if record["over_budget"] and not self.exceeded:
            self.exceeded, self.exceeded_at = True, int(step)
        return record

    def _divergence_warning(self) -> list[str]:
        """One line however many measurements diverged: the first step, and how many."""
        steps = [r["step"] for r in self.history if r.get("diverged")]
        if not steps:
            return []
        more = (
            f" (and at {len(steps) - 1} later of the {len(self.history)} measurements)"
            if len(steps) > 1
            else ""
        )
        return [
            f"The model diverged by step {steps[0]}{more}: its outputs on the source images "
            "are not finite, which counts as total forgetting (over any budget)."
        ]

    def _budget_warning(self) -> list[str]:
        """One line for every measurement over the budget: how often, first, worst."""
        over = [r for r in self.history if r.get("over_budget")]
        if not over or self.max_forgetting is None:  # divergence alone: its own warning
            return []
        worst = max(over, key=lambda r: r["forgetting"])
        what = (
            "source-accuracy drop"
            if worst["forgetting_measure"] == "source_accuracy_drop"
            else "disagreement with the pretrained model"
        )
        return [
            f"The forgetting budget {self.max_forgetting:.3f} was exceeded at {len(over)} of "
            f"{len(self.history)} measured steps, first at step {self.exceeded_at}; the worst "
            f"{what} was {worst['forgetting']:.3f} at step {worst['step']}."
        ]

    def _warn_once(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    # ---------------------------------------------------------------------------- results
    def to_dict(self) -> dict:
        """The tracked history as results.json of kind ``"track"``."""
        results = {
            "schema": SCHEMA_VERSION,
            "kind": "track",
            "model": self.loaded.to_dict(),
            "source": {
                "name": self.source.name,
                "n_images": self.n_images,
                "labelled": self.meter.source_y is not None,
            },
            "preprocessing": self.prep.to_dict(),
            "config": {
                "layers": list(self.blocks),
                "head": self.loaded.head,
                "n_images": self.n_images,
                "max_forgetting": self.max_forgetting,
            },
            "reference_source_accuracy": self.reference_source_accuracy,
            "history": copy.deepcopy(self.history),
            "exceeded": self.exceeded,
            "exceeded_at": self.exceeded_at,
            "warnings": [*self.warnings, *self._divergence_warning(), *self._budget_warning()],
            "environment": {
                **environment(str(self.meter.device), self.seed),
                "wall_s": time.perf_counter() - self._started,
                "forgetting_layout": self.meter.layout.describe(),
            },
        }
        return jsonable(results, results["warnings"])

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``out_dir``/results.json and report.html atomically; returns both paths."""
        from diagnose.report import check_out_dir, write_outputs

        check_out_dir(out_dir)
        return write_outputs(self.to_dict(), Path(out_dir))
