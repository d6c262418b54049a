"""Fine-tuning strategies as data: which parameter groups train, at which LR, in which stage.

A model is cut into *parameter groups*: one per block (the names the probes
use, e.g. ``block1`` .. ``block4`` or ``maxpool``, ``layer1`` .. ``layer4``)
plus ``"head"``. A strategy is a :func:`plan`: a pure description (no model,
no I/O) of its stages, each with the groups that train and their LRs. The
engine that runs a plan is :func:`diagnose.training.runner.run_strategy`.

LRs, with ``h = config.head_lr`` and ``r = config.backbone_ratio``:

==================  =======================================================
feature_extraction  head at h, on features cached once (backbone frozen), max(epochs, lp_epochs)
partial             ``config.unfreeze`` blocks at h*r, head at h
full_low_lr         every block at h*r (10x below h by default), head at h
discriminative      head at h, the block d levels below the head at h/2.6^d
gradual_unfreeze    stage 0 the head, then one more block per stage from the
                    top, discriminative LRs; stages split the steps evenly
lp_ft               linear probe (head at h on cached features, lp_epochs),
                    then everything at h*r (Kumar et al. 2022)
l2_sp               as full_low_lr, plus alpha/2 ||w - w0||^2 on pretrained
                    weights and weight decay only on the head (Li et al. 2018)
bitfit              the biases and normalisation parameters of every block, and
                    the head, all at h (Ben Zaken et al. 2022)
lora                peft's LoRA of rank ``lora_rank`` on the Linear and 2-D Conv
                    layers of ``adapted_blocks`` (every block by default), and
                    the head, all at h (Hu et al. 2022); BatchNorm statistics stay
                    frozen (this toolkit's choice: the adapter alone holds the
                    change, so the adapter file is the whole fine-tuning)
scratch             random init of the same architecture, everything at h
==================  =======================================================

Example:
    >>> p = plan("discriminative", ["block1", "block2"], TrainConfig(head_lr=0.026))
    >>> {g: round(lr, 5) for g, lr in p.stages[0].lr.items()}
    {'block1': 0.00385, 'block2': 0.01, 'head': 0.026}
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from diagnose.core import STRATEGY_NAMES
from diagnose.models import HEAD
from diagnose.training.config import TrainConfig, check_config

__all__ = [
    "Plan",
    "ROUTES",
    "Stage",
    "plan",
]


def _discriminative(blocks: list[str], head_lr: float, factor: float) -> dict[str, float]:
    n = len(blocks)
    lr = {b: head_lr / factor ** (n - i) for i, b in enumerate(blocks)}
    lr[HEAD] = head_lr
    return lr


@dataclass(frozen=True)
class Stage:
    """One stage of a plan: which parameter groups train, at which LR, for how long.

    Attributes:
        trainable: the parameter groups that train (block names and ``"head"``).
        lr: the LR of each trainable group.
        epochs: a stage of its own length (a head on cached features), else None.
        until_step_fraction: the stage ends once this fraction of the strategy's
            steps is done (gradual unfreezing), else None.
        on_cached_features: a head-only stage trained on features captured once.
    """

    trainable: tuple[str, ...]
    lr: dict[str, float]
    epochs: int | None = None
    until_step_fraction: float | None = None
    on_cached_features: bool = False

    def to_dict(self) -> dict:
        """The stage as results.json records it (absent fields left out)."""
        out: dict = {"trainable": list(self.trainable), "lr": dict(self.lr)}
        if self.epochs is not None:
            out["epochs"] = self.epochs
        if self.until_step_fraction is not None:
            out["until_step_fraction"] = self.until_step_fraction
        if self.on_cached_features:
            out["on_cached_features"] = True
        return out


# How the engine runs a plan's stages.
ROUTES = ("head", "probe_then_tune", "tune")


@dataclass(frozen=True)
class Plan:
    """What a strategy trains, at which LR, in which stage: the engine reads only this.

    Attributes:
        name: the strategy.
        stages: the stages in order; the last is the main one.
        init: ``"pretrained"`` or ``"random"`` (scratch).
        penalty: None or ``{"kind": "l2_sp", "alpha": alpha}``.
        frozen: blocks no stage trains.
        cached_features: some stage trains a head on cached features.
        route: ``"head"`` (one head-only stage on cached features),
            ``"probe_then_tune"`` (that, then the network tuned from it) or
            ``"tune"`` (the stages on the network).
        frozen_prefix_cache: the frozen blocks never train in any stage, so
            their outputs may be computed once and cached.
        staged: the stages split the steps by ``until_step_fraction``.
        params: which parameters of a trained block train: ``"all"``, ``"bias_norm"``
            (BitFit: biases and normalisation parameters) or ``"lora"`` (LoRA's low-rank
            update only; the block's own weights stay frozen).
        lora: ``{"rank", "alpha", "targets"}`` for ``params="lora"``, else None.
    """

    name: str
    stages: tuple[Stage, ...]
    init: str
    penalty: dict | None
    frozen: tuple[str, ...]
    cached_features: bool
    route: str
    frozen_prefix_cache: bool
    staged: bool
    params: str = "all"
    lora: dict | None = None

    def trained_groups(self) -> set[str]:
        """Every parameter group some stage trains."""
        return {g for s in self.stages for g in s.trainable}

    def to_dict(self) -> dict:
        """Plain JSON: ``{"name", "stages", "init", "penalty", "frozen", "cached_features", ...}``."""
        return {
            "name": self.name,
            "stages": [s.to_dict() for s in self.stages],
            "init": self.init,
            "penalty": None if self.penalty is None else dict(self.penalty),
            "frozen": list(self.frozen),
            "cached_features": self.cached_features,
            "route": self.route,
            "frozen_prefix_cache": self.frozen_prefix_cache,
            "staged": self.staged,
            "params": self.params,
            "lora": None if self.lora is None else dict(self.lora),
        }


def _stage(d: dict) -> Stage:
    return Stage(
        trainable=tuple(d["trainable"]),
        lr=dict(d["lr"]),
        epochs=d.get("epochs"),
        until_step_fraction=d.get("until_step_fraction"),
        on_cached_features=bool(d.get("on_cached_features", False)),
    )


def plan(name: str, blocks: list[str], config: TrainConfig) -> Plan:
    """What strategy ``name`` trains, at which LR, in which stage (pure; no model needed).

    Returns a :class:`Plan`: its :class:`Stage` list (which groups train, their
    LRs, each stage's length), the initialisation, the penalty, the frozen
    blocks, and how the engine runs it (``route``, ``frozen_prefix_cache``,
    ``staged``). The engine branches on these fields, never on the name.

    Raises ValueError for an unknown ``name`` (listing ``STRATEGY_NAMES``),
    ``config.unfreeze`` naming a block not in ``blocks``, or an invalid config.

    Example:
        >>> plan("partial", ["b1", "b2", "b3"], TrainConfig(unfreeze=["b3"])).frozen
        ('b1', 'b2')
    """
    if name not in STRATEGY_NAMES:
        close = difflib.get_close_matches(str(name), STRATEGY_NAMES, n=1)
        raise ValueError(
            f"Unknown strategy {name!r}. Choose one of: {', '.join(STRATEGY_NAMES)}."
            + (f" Did you mean {close[0]!r}?" if close else "")
        )
    if isinstance(blocks, str) or not blocks or not all(isinstance(b, str) for b in blocks):
        raise ValueError(
            f"The 'blocks' parameter must be a non-empty list of module names. Got {blocks!r} instead."
        )
    blocks = list(blocks)
    check_config(config)
    typed = tuple(_stage(s) for s in _STAGES[name](blocks, config))
    trained = {g for s in typed for g in s.trainable}
    frozen = tuple(b for b in blocks if b not in trained)
    first_on_cache = typed[0].on_cached_features
    route = ("head" if len(typed) == 1 else "probe_then_tune") if first_on_cache else "tune"
    return Plan(
        name=name,
        stages=typed,
        init="random" if name == "scratch" else "pretrained",
        penalty={"kind": "l2_sp", "alpha": float(config.l2_sp_alpha)} if name == "l2_sp" else None,
        frozen=frozen,
        cached_features=any(s.on_cached_features for s in typed),
        route=route,
        # One stage on the network with blocks below it frozen throughout: their
        # outputs never change, so computing them once is exact.
        frozen_prefix_cache=route == "tune" and len(typed) == 1 and bool(frozen),
        staged=any(s.until_step_fraction is not None for s in typed),
        params=_PARAMS.get(name, "all"),
        lora=_lora(config) if name == "lora" else None,
    )


def _lrs(c: TrainConfig) -> tuple[float, float]:
    """``(head LR, backbone LR)``: the backbone at ``backbone_ratio`` of the head."""
    return float(c.head_lr), float(c.head_lr * c.backbone_ratio)


def _feature_extraction(blocks: list[str], c: TrainConfig) -> list[dict]:
    # A head on cached features costs next to nothing per epoch, so it trains to
    # convergence (as lp_ft's probe stage does) rather than for the shared epoch
    # budget, which would handicap it; its FLOPs in the results show the cost.
    epochs = max(c.epochs, c.lp_epochs)
    return [{"epochs": epochs, "trainable": [HEAD], "lr": {HEAD: _lrs(c)[0]},
             "on_cached_features": True}]  # fmt: skip


def _partial(blocks: list[str], c: TrainConfig) -> list[dict]:
    unfreeze = [blocks[-1]] if c.unfreeze is None else list(c.unfreeze)
    if not unfreeze or any(b not in blocks for b in unfreeze):
        raise ValueError(
            f"The 'unfreeze' parameter of TrainConfig must name blocks among {blocks}. Got {unfreeze!r} instead."
        )
    h, low = _lrs(c)
    trainable = [b for b in blocks if b in unfreeze] + [HEAD]
    return [{"epochs": c.epochs, "trainable": trainable,
             "lr": {g: (h if g == HEAD else low) for g in trainable}}]  # fmt: skip


def _full(blocks: list[str], c: TrainConfig) -> list[dict]:
    h, low = _lrs(c)
    everything = [*blocks, HEAD]
    return [{"epochs": c.epochs, "trainable": everything,
             "lr": {g: (h if g == HEAD else low) for g in everything}}]  # fmt: skip


def _discriminative_stages(blocks: list[str], c: TrainConfig) -> list[dict]:
    lrs = _discriminative(blocks, _lrs(c)[0], c.discriminative_factor)
    return [{"epochs": c.epochs, "trainable": [*blocks, HEAD], "lr": lrs}]


def _gradual_unfreeze(blocks: list[str], c: TrainConfig) -> list[dict]:
    lrs = _discriminative(blocks, _lrs(c)[0], c.discriminative_factor)
    n_stages = len(blocks) + 1
    stages = []
    for k in range(n_stages):
        trainable = blocks[len(blocks) - k :] + [HEAD]
        stages.append({"until_step_fraction": (k + 1) / n_stages, "trainable": trainable,
                       "lr": {g: lrs[g] for g in trainable}})  # fmt: skip
    return stages


def _lp_ft(blocks: list[str], c: TrainConfig) -> list[dict]:
    h, low = _lrs(c)
    everything = [*blocks, HEAD]
    return [
        {"epochs": c.lp_epochs, "trainable": [HEAD], "lr": {HEAD: h}, "on_cached_features": True},
        {"epochs": c.epochs, "trainable": everything, "lr": dict.fromkeys(everything, low)},
    ]


def _bitfit(blocks: list[str], c: TrainConfig) -> list[dict]:
    # Biases and norms are few and move the features only through shifts and scales,
    # so they train at the head's LR, not the backbone's tenth of it.
    everything = [*blocks, HEAD]
    return [
        {"epochs": c.epochs, "trainable": everything, "lr": dict.fromkeys(everything, _lrs(c)[0])}
    ]


def _lora_stages(blocks: list[str], c: TrainConfig) -> list[dict]:
    adapted = list(blocks) if c.adapted_blocks is None else list(c.adapted_blocks)
    if any(b not in blocks for b in adapted):
        raise ValueError(
            f"The 'adapted_blocks' parameter of TrainConfig must name blocks among {blocks}. "
            f"Got {adapted!r} instead."
        )
    # B starts at zero, so the update grows from nothing: LoRA trains at the head's LR
    # (its usual LRs are those of a new layer, not the backbone's).
    trainable = [b for b in blocks if b in adapted] + [HEAD]
    return [
        {"epochs": c.epochs, "trainable": trainable, "lr": dict.fromkeys(trainable, _lrs(c)[0])}
    ]


def _lora(c: TrainConfig) -> dict:
    targets = None if c.lora_targets is None else list(c.lora_targets)
    return {"rank": int(c.lora_rank), "alpha": float(c.lora_alpha), "targets": targets}


def _scratch(blocks: list[str], c: TrainConfig) -> list[dict]:
    everything = [*blocks, HEAD]
    return [
        {"epochs": c.epochs, "trainable": everything, "lr": dict.fromkeys(everything, _lrs(c)[0])}
    ]


# Each strategy's stages (dicts for :func:`_stage`) from the blocks and the config.
_STAGES = {
    "feature_extraction": _feature_extraction,
    "partial": _partial,
    "full_low_lr": _full,
    "l2_sp": _full,
    "discriminative": _discriminative_stages,
    "gradual_unfreeze": _gradual_unfreeze,
    "lp_ft": _lp_ft,
    "bitfit": _bitfit,
    "lora": _lora_stages,
    "scratch": _scratch,
}
# Which parameters of a trained block train (:attr:`Plan.params`), where not all of them.
_PARAMS = {"bitfit": "bias_norm", "lora": "lora"}
