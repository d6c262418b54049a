"""Independent oracle for the strategy recommendation on real cases (issue 15).

A plain training loop written for this benchmark: it imports nothing from
``diagnose`` or ``probes`` (only torch, numpy and ``benchmarks/real_cases.py``),
so a bug in the product's engine, caches, LR finder or selection cannot hide
here. For every (case, label budget, seed) of ``real_cases.cases()`` it trains
each configuration fairly and measures it on the held-out test split:

==================  =========================================================
feature_extraction  new head on the frozen backbone (pooled features cached)
partial_last1       last stage + head train (stage at h/10), the rest frozen
partial_last2       last two stages + head (stages at h/10)
partial_half        the top ceil(n/2) stages + head (stages at h/10)
full_low_lr         every stage at h/10, head at h
discriminative      head at h, the stage d levels below it at h / 2.6**d
lp_ft               the feature_extraction head (its own chosen LR), then
                    every stage and the head at h/10 (Kumar et al. 2022)
bitfit              the biases and normalisation parameters of every stage,
                    and the head, all at h (Ben Zaken et al. 2022)
lora_r4, lora_r16   a low-rank update B A * 2 beside every frozen nn.Linear and
                    2-D nn.Conv2d of every stage (1x1 only where the layer pads
                    itself), rank 4 or 16, and the head, all at h; BatchNorm
                    statistics frozen (Hu et al. 2022). Written here, not peft's.
==================  =========================================================

Every configuration also records what it forgot, at its chosen LR: on the
case's held-out source images, the ORIGINAL head applied to the fine-tuned
features, its agreement with the pretrained model's predictions and (where the
source images carry the original head's classes) its source accuracy, and the
number of parameters it trained.

Rules (shared/VALIDATION.md): a new head ``nn.Linear(in_features, 10)``
seeded per seed and identical across configurations (for the linear probe,
feature_extraction, on the frozen features centred per feature and divided by
their RMS, a fixed affine map that conditions SGD; LP-FT folds it into its
head before tuning); SGD, momentum 0.9,
weight decay 1e-4, cosine schedule per step, batch 32, the same epochs for
every configuration of a (case, budget); no augmentation. Frozen stages stay
in eval mode (their BatchNorm statistics never move); their outputs are
computed once and cached, which is exactly equivalent. Each configuration
gets its own head LR h from the grid, chosen on the validation split by
accuracy, ties broken on validation loss (never grid order); the test split
is evaluated only at the chosen LR and chooses nothing.

Writes ``benchmarks/oracle_results.json`` after every configuration (a rerun
resumes from it when the settings match; ``--fresh`` starts over) and prints
a progress line per configuration and the final table::

    python benchmarks/oracle_recommend.py            # the full oracle
    python benchmarks/oracle_recommend.py --tiny     # smoke test (seconds), /tmp output
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import real_cases  # noqa: E402

# cheapest first: cached features, then more trained stages, then LP-FT (probe + full tune)
CONFIGS = (
    "feature_extraction",
    "partial_last1",
    "partial_last2",
    "partial_half",
    "full_low_lr",
    "discriminative",
    "lp_ft",
)
# Parameter-efficient configurations (issue 28), run with --configs and merged after.
PEFT_CONFIGS = ("bitfit", "lora_r4", "lora_r16")
# Their grid adds one LR below the others': an update that starts at zero (LoRA) or a few
# parameters (BitFit) may want another LR than the head (a pilot's LoRA diverged at 0.3).
PEFT_LOWER_LR = 0.003
# head LR grids; the LR-ratio conventions below follow the strategy definitions
GRID = {
    # pilots (validation split only) put the best LRs of every configuration inside this grid
    "imagenet_effnet_to_mnist": (0.01, 0.03, 0.1, 0.3),
    "mnist_resnet_to_digits": (0.01, 0.03, 0.1, 0.3),
}
# epochs per label budget, the same for every configuration: about 50 SGD steps of 32
# either way (48 and 52), sized so the oracle fits ~1 CPU-hour on a shared 2-core machine
EPOCHS = {10: 12, 40: 4}
BATCH = 32
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
BACKBONE_RATIO = 0.1
DISCRIMINATIVE_FACTOR = 2.6
DEFAULT_OUT = Path(__file__).resolve().parent / "oracle_results.json"


# ----------------------------------------------------------------------------- model pieces


def trainable_stages(config: str, stages: tuple[str, ...]) -> tuple[str, ...]:
    """The backbone stages that train under ``config`` (bottom to top)."""
    n = len(stages)
    k = {
        "feature_extraction": 0,
        "partial_last1": 1,
        "partial_last2": 2,
        "partial_half": math.ceil(n / 2),
    }.get(config)
    if k is None:
        # "partial_lastK": any other depth a race may pick (checked with --configs)
        k = int(config[len("partial_last") :]) if config.startswith("partial_last") else n
    return stages[n - k :]


def stage_lrs(config: str, stages: tuple[str, ...], h: float) -> dict[str, float]:
    """LR of every trainable stage, plus ``"head"``."""
    train = trainable_stages(config, stages)
    if config == "discriminative":
        lrs = {s: h / DISCRIMINATIVE_FACTOR ** (len(train) - i) for i, s in enumerate(train)}
        return {**lrs, "head": h}
    if config == "lp_ft":
        return {**{s: h * BACKBONE_RATIO for s in train}, "head": h * BACKBONE_RATIO}
    if config in PEFT_CONFIGS:  # few parameters, or an update that starts at zero: at h
        return {**{s: h for s in train}, "head": h}
    return {**{s: h * BACKBONE_RATIO for s in train}, "head": h}


class LoRA(nn.Module):
    """``layer(x) + scale * B(A(x))`` beside a frozen ``nn.Linear`` or ``nn.Conv2d``.

    A has the layer's kernel, stride and padding (Kaiming-uniform init), B is 1x1 (zero
    init), so the update starts at nothing (Hu et al. 2022, section 4.1).
    """

    def __init__(self, layer: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.layer, self.scale = layer, alpha / rank
        if isinstance(layer, nn.Conv2d):
            self.A = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride,
                               layer.padding, layer.dilation, bias=False)  # fmt: skip
            self.B = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        else:
            self.A = nn.Linear(layer.in_features, rank, bias=False)
            self.B = nn.Linear(rank, layer.out_features, bias=False)
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) + self.scale * self.B(self.A(x))


def add_lora(module: nn.Module, rank: int) -> None:
    """Wrap every plain Linear and 2-D Conv2d (groups 1) under ``module`` in :class:`LoRA`."""
    for name, child in list(module.named_children()):
        conv = isinstance(child, nn.Conv2d) and child.groups == 1
        plain = type(child) in (nn.Linear, nn.Conv2d)
        pointwise = conv and tuple(child.kernel_size) == (1, 1)  # a self-padding 1x1 pads nothing
        if (plain and (conv or isinstance(child, nn.Linear))) or pointwise:
            setattr(module, name, LoRA(child, rank, alpha=2.0 * rank))
        else:
            add_lora(child, rank)


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))


def peft_params(stage: nn.Module, config: str) -> list[nn.Parameter]:
    """The parameters of ``stage`` a parameter-efficient configuration trains."""
    if config.startswith("lora"):
        return [p for m in stage.modules() if isinstance(m, LoRA) for p in (m.A.weight, m.B.weight)]
    owners = {n: m for n, m in stage.named_modules()}
    return [
        p
        for n, p in stage.named_parameters()
        if n.endswith("bias") or is_norm(owners[n.rpartition(".")[0]])
    ]


class Suffix(nn.Module):
    """Stages ``names`` of ``backbone`` (taken over, not copied), global average pool, new head.

    The head reads the pooled features centred and scaled by fixed statistics
    (``mu`` per feature, ``sd`` one RMS for all: buffers, never trained): a reparameterised linear head
    that only conditions SGD (pooled ReLU features with a large common offset
    make plain SGD on a new head diverge or crawl).
    """

    def __init__(self, backbone, names: tuple[str, ...], head: nn.Linear, mu=None, sd=None):
        super().__init__()
        self.names = names
        self.stages = nn.ModuleDict({n.replace(".", "_"): backbone.get_submodule(n) for n in names})
        self.head = head
        d = head.in_features
        self.register_buffer("mu", torch.zeros(d) if mu is None else mu.clone())
        self.register_buffer("sd", torch.ones(d) if sd is None else sd.clone())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.stages.values():
            x = m(x)
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.features(x) - self.mu) / self.sd)


@torch.no_grad()
def prefix_outputs(backbone: nn.Module, stages, x: torch.Tensor, cuts: set[int], bs: int = 200):
    """Eval-mode outputs after the first ``k`` stages for every k in ``cuts`` (k = n: pooled)."""
    backbone.eval()
    out: dict[int, list[torch.Tensor]] = {k: [] for k in cuts}
    for i in range(0, len(x), bs):
        h = x[i : i + bs]
        if 0 in out:
            out[0].append(h)
        for k, name in enumerate(stages, 1):
            h = backbone.get_submodule(name)(h)
            if k in out:
                out[k].append(h.mean(dim=(2, 3)) if k == len(stages) else h)
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 250):
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), bs):
        logits = model(x[i : i + bs])
        loss += float(F.cross_entropy(logits, y[i : i + bs], reduction="sum"))
        correct += int((logits.argmax(1) == y[i : i + bs]).sum())
    return correct / len(y), loss / len(y)


def train(
    model: Suffix, groups, x, y, epochs: int, seed: int, bn_train: bool = True, config: str = ""
) -> float:
    """Plain SGD + cosine; trainable stages in train mode, everything else eval. Returns last loss."""
    params = []
    for name, lr in groups.items():
        mod = model.head if name == "head" else model.stages[name.replace(".", "_")]
        chosen = peft_params(mod, config) if config in PEFT_CONFIGS and name != "head" else None
        params.append(
            {"params": chosen if chosen is not None else list(mod.parameters()), "lr": lr}
        )
    trained = {id(p) for g in params for p in g["params"]}
    for p in model.parameters():
        p.requires_grad_(id(p) in trained)
    opt = torch.optim.SGD(params, lr=0.0, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    steps = epochs * math.ceil(len(y) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * t / steps))
    )
    g = torch.Generator().manual_seed(seed)
    model.eval()
    for name in groups:
        if name != "head" and bn_train:
            model.stages[name.replace(".", "_")].train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(order), BATCH):
            b = order[i : i + BATCH]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last = float(loss.detach())
    model.eval()
    return last


@torch.no_grad()
def forgetting(model: Suffix, src_in: torch.Tensor, orig_head: nn.Module, ref, src_y) -> dict:
    """The original head on ``model``'s features of the source images: agreement with the
    pretrained predictions ``ref`` and, with ``src_y``, source accuracy."""
    model.eval()
    pred = torch.cat(
        [orig_head(model.features(src_in[i : i + 250])).argmax(1) for i in range(0, len(ref), 250)]
    )
    out = {"agreement": float((pred == ref).double().mean())}
    if src_y is not None:
        out["source_accuracy"] = float((pred == src_y).double().mean())
        out["source_accuracy_before"] = float((ref == src_y).double().mean())
        out["source_accuracy_drop"] = out["source_accuracy_before"] - out["source_accuracy"]
    return out


def source_set(case, base: nn.Module, head: nn.Module):
    """``(images, pretrained predictions, labels or None)`` of the case's source images; the
    labels only where they are the original head's classes (MNIST digits, not the photos)."""
    x_u8, y, names = real_cases._source_data(case.name)
    x = real_cases._normalise(x_u8, case.mean, case.std)
    with torch.no_grad():
        base.eval()
        ref = torch.cat([base(x[i : i + 250]).argmax(1) for i in range(0, len(x), 250)])
    labelled = len(names) == head.out_features
    return x, ref, torch.from_numpy(y).long() if labelled else None


# ----------------------------------------------------------------------------- one block


def better(a: dict, b: dict | None) -> bool:
    """Validation accuracy first, then validation loss; never grid order."""
    return b is None or (a["val_acc"], -a["val_loss"]) > (b["val_acc"], -b["val_loss"])


def run_block(
    case, grid, epochs: int, done: dict, on_config, t_start: float, configs=CONFIGS
) -> None:
    """Every configuration of one (case, budget, seed); ``on_config(record)`` after each."""
    if "lp_ft" in configs and "feature_extraction" not in configs:
        configs = ("feature_extraction", *configs)  # LP-FT starts from the probe
    if all(f"{case.key}/{c}" in done for c in configs):
        return
    torch.manual_seed(case.seed)
    base = case.model_fn()
    stages = tuple(case.stages)
    n = len(stages)
    head_mod = base.get_submodule(case.head)
    in_features = head_mod.in_features
    # Sanity: the oracle's forward (stages -> global average pool -> head) is the model's own.
    with torch.no_grad():
        probe = Suffix(copy.deepcopy(base), stages, copy.deepcopy(head_mod))
        xs = case.val_x[:8]
        assert torch.allclose(probe(xs), base(xs), atol=1e-4), "forward convention mismatch"
    torch.manual_seed(1_000 + case.seed)
    head0 = nn.Linear(in_features, case.n_classes)
    cuts = {n - len(trainable_stages(c, stages)) for c in (*CONFIGS, *configs)}
    t0 = time.perf_counter()
    cache = {
        split: prefix_outputs(base, stages, x, cuts)
        for split, x in (("train", case.train_x), ("val", case.val_x), ("test", case.test_x))
    }
    src_x, src_ref, src_y = source_set(case, base, head_mod)
    src_cache = prefix_outputs(base, stages, src_x, cuts)
    cache_s = time.perf_counter() - t0
    ys = {"train": case.train_y, "val": case.val_y, "test": case.test_y}
    # The linear probe (feature_extraction, and so LP-FT's first stage) reads the frozen
    # features centred per feature and divided by their RMS, as a careful linear probe would:
    # on raw pooled ReLU features (a large common offset) plain SGD diverges or crawls.
    # Configurations that tune blocks use the plain head on raw features: there the
    # scaling amplified train-mode shifts and diverged (pilot). LP-FT folds it into its head.
    feats = cache["train"][n]
    mu = feats.mean(0)
    sd = (feats - mu).pow(2).mean().sqrt().expand_as(mu).clone()
    fe_head = None
    for config in configs:
        key = f"{case.key}/{config}"
        if key in done:
            if config == "feature_extraction":
                fe_head = _head_from_record(done[key], in_features, case.n_classes)
            continue
        train_stages = trainable_stages(config, stages)
        k = n - len(train_stages)
        t_cfg = time.perf_counter()
        best, best_model, lr_runs = None, None, []
        for h in (PEFT_LOWER_LR, *grid) if config in PEFT_CONFIGS else grid:
            t_lr = time.perf_counter()
            backbone = copy.deepcopy(base)
            if config == "feature_extraction":
                model = Suffix(backbone, train_stages, copy.deepcopy(head0), mu, sd)
            elif config == "lp_ft":
                model = Suffix(backbone, train_stages, fold(fe_head, mu, sd))
            else:
                model = Suffix(backbone, train_stages, copy.deepcopy(head0))
            if config.startswith("lora"):
                torch.manual_seed(2_000 + case.seed)  # A's init, the same for every LR
                for stage in model.stages.values():
                    add_lora(stage, int(config[len("lora_r") :]))
            groups = stage_lrs(config, stages, h)
            # Every tuned stage trains its BatchNorm (LP-FT too). Tuning LP-FT with BatchNorm
            # statistics frozen (bn_train=False) was tried and diverged on both cases. LoRA
            # by definition changes nothing but its update: statistics frozen.
            bn_train = not config.startswith("lora")
            train_loss = train(
                model, groups, cache["train"][k], ys["train"], epochs, case.seed, bn_train, config
            )
            val_acc, val_loss = evaluate(model, cache["val"][k], ys["val"])
            rec = {
                "lr": h,
                "lrs": groups,
                "val_acc": val_acc,
                "val_loss": val_loss,
                "final_train_loss": train_loss,
                "seconds": round(time.perf_counter() - t_lr, 2),
            }
            lr_runs.append(rec)
            if better(rec, best):
                best, best_model = rec, model
        test_acc, test_loss = evaluate(best_model, cache["test"][k], ys["test"])
        trained = [p for p in best_model.parameters() if p.requires_grad]
        record = {
            "case": case.name,
            "budget": case.budget,
            "seed": case.seed,
            "config": config,
            "trainable_stages": list(train_stages),
            "chosen_lr": best["lr"],
            "val_acc": best["val_acc"],
            "val_loss": best["val_loss"],
            "test_acc": test_acc,
            "test_loss": test_loss,
            "n_train": len(ys["train"]),
            "n_val": len(ys["val"]),
            "n_test": len(ys["test"]),
            "lr_runs": lr_runs,
            "forgetting": forgetting(best_model, src_cache[k], head_mod, src_ref, src_y),
            "trainable_params": int(sum(p.numel() for p in trained)),
            "seconds": round(
                time.perf_counter() - t_cfg + (cache_s if config == CONFIGS[0] else 0), 2
            ),
        }
        if config == "feature_extraction":
            fe_head = best_model.head
            record["head_state"] = {
                "weight": best_model.head.weight.detach().tolist(),
                "bias": best_model.head.bias.detach().tolist(),
            }
        on_config(key, record)
        print(
            f"[{time.perf_counter() - t_start:7.0f}s] {key:48s} lr {best['lr']:<6g} "
            f"val {best['val_acc']:.3f} ({best['val_loss']:.3f}) test {test_acc:.3f} "
            f"{record['seconds']:6.1f}s",
            flush=True,
        )


@torch.no_grad()
def fold(head: nn.Linear, mu: torch.Tensor, sd: torch.Tensor) -> nn.Linear:
    """A plain Linear computing ``head((f - mu) / sd)``."""
    out = copy.deepcopy(head)
    out.weight.div_(sd)
    out.bias.sub_(out.weight @ mu)
    return out


def _head_from_record(rec: dict, in_features: int, n_classes: int) -> nn.Linear:
    head = nn.Linear(in_features, n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(rec["head_state"]["weight"]))
        head.bias.copy_(torch.tensor(rec["head_state"]["bias"]))
    return head


# ----------------------------------------------------------------------------- summary


def summarise(runs: dict) -> dict:
    """Per case and budget: mean/std test accuracy of each config over seeds, and the best."""
    out: dict = {}
    for rec in runs.values():
        cell = out.setdefault(rec["case"], {}).setdefault(str(rec["budget"]), {})
        c = cell.setdefault("configs", {}).setdefault(
            rec["config"], {"test_acc": [], "chosen_lr": [], "val_acc": [], "seeds": []}
        )
        c["test_acc"].append(rec["test_acc"])
        c["chosen_lr"].append(rec["chosen_lr"])
        c["val_acc"].append(rec["val_acc"])
        c["seeds"].append(rec["seed"])
        for k, v in (rec.get("forgetting") or {}).items():  # records from before issue 28 have none
            c.setdefault(k, []).append(v)
        if "trainable_params" in rec:
            c["trainable_params"] = rec["trainable_params"]
    for case in out.values():
        for cell in case.values():
            for c in cell["configs"].values():
                a = c["test_acc"]
                c["mean"] = statistics.fmean(a)
                c["std"] = statistics.stdev(a) if len(a) > 1 else 0.0
                c["n_seeds"] = len(a)
            ranked = sorted(cell["configs"].items(), key=lambda kv: -kv[1]["mean"])
            best_name, best = ranked[0]
            cell["best"] = best_name
            cell["best_mean"] = best["mean"]
            # configs whose mean is within the larger of the two seed spreads of the best
            cell["tied_with_best"] = [
                name
                for name, c in ranked[1:]
                if best["mean"] - c["mean"] <= max(best["std"], c["std"])
            ]
            # the honest verdict on a tie is the cheaper configuration (CONFIGS is cheapest first)
            cell["cheapest_within_spread"] = min(
                [best_name, *cell["tied_with_best"]], key=_cheapness
            )
            cell["front"] = front(cell["configs"])
    return out


def forgot(c: dict) -> float | None:
    """Mean forgetting of a summarised configuration: the source-accuracy drop where the
    source has the head's classes, else the disagreement with the pretrained model."""
    if c.get("source_accuracy_drop"):
        return statistics.fmean(c["source_accuracy_drop"])
    if c.get("agreement"):
        return 1.0 - statistics.fmean(c["agreement"])
    return None


def front(configs: dict) -> list[str]:
    """The configurations no other beats on both mean test accuracy and mean forgetting
    (Pareto), from the least forgetting up."""
    pts = {n: (c["mean"], forgot(c)) for n, c in configs.items() if forgot(c) is not None}

    def beaten(a):
        acc, f = pts[a]
        return any(
            b != a and pts[b][0] >= acc and pts[b][1] <= f and (pts[b][0] > acc or pts[b][1] < f)
            for b in pts
        )

    return sorted((n for n in pts if not beaten(n)), key=lambda n: pts[n][1])


def print_front(summary: dict) -> None:
    """Per case and budget: accuracy, forgetting, trainable parameters, and the front."""
    for case, cells in summary.items():
        for budget, cell in sorted(cells.items(), key=lambda kv: int(kv[0])):
            if not cell.get("front"):
                continue
            print(f"\n{case} b{budget}: config, test acc (mean), forgetting (seeds), params, front")
            for name in (*CONFIGS, *PEFT_CONFIGS):
                c = cell["configs"].get(name)
                if c is None or forgot(c) is None:
                    continue
                n_f = len(c.get("source_accuracy_drop") or c.get("agreement") or [])
                mark = "front" if name in cell["front"] else ""
                print(
                    f"  {name:20s} {c['mean']:.3f}  {forgot(c):.3f} ({n_f})  "
                    f"{c.get('trainable_params', 0):>9,d}  {mark}"
                )


def _cheapness(name: str) -> tuple[int, int]:
    """Cost order of a configuration: CONFIGS' order, a partial_lastK (K > 2) after partial_last2,
    the parameter-efficient ones last (their steps cost a full backward pass)."""
    if name in CONFIGS:
        return (CONFIGS.index(name), 0)
    if name in PEFT_CONFIGS:
        return (len(CONFIGS) + PEFT_CONFIGS.index(name), 0)
    return (CONFIGS.index("partial_last2"), int(name[len("partial_last") :]))


def print_table(summary: dict) -> None:
    present = {c for cells in summary.values() for cell in cells.values() for c in cell["configs"]}
    shown = [c for c in (*CONFIGS, *PEFT_CONFIGS) if c in present]
    cols = [c.replace("feature_extraction", "feat_extr") for c in shown]
    print()
    print(f"{'case':26s} {'budget':>6s} " + " ".join(f"{c:>14s}" for c in cols) + "  best")
    for case, cells in summary.items():
        for budget, cell in sorted(cells.items(), key=lambda kv: int(kv[0])):
            row = []
            for c in shown:
                s = cell["configs"].get(c)
                row.append(
                    f"{100 * s['mean']:6.1f}±{100 * s['std']:4.1f}({s['n_seeds']})" if s else "-"
                )
            print(
                f"{case:26s} {budget:>6s} "
                + " ".join(f"{r:>14s}" for r in row)
                + f"  {cell['best']} ({100 * cell['best_mean']:.1f})"
                + (
                    f"; within spread: {', '.join(cell['tied_with_best'])}"
                    if cell["tied_with_best"]
                    else ""
                )
            )
    print("test accuracy in %, mean ± std over seeds (number of seeds)")


def _atomic_json(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def _epochs_for(budget: int, override: int | None) -> int:
    return override or EPOCHS.get(budget, 8)


def _stream(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        print(f"{prefix} {line}", end="", flush=True)


def _run_children(args, names, out: Path) -> dict:
    """One child process per case (1 thread each); returns the merged runs of their part files."""
    parts = {n: _part_path(args, n) for n in names}
    procs = []
    for n in names:
        cmd = [sys.executable, __file__, "--child", "--cases", n, "--out", str(parts[n])]
        cmd += ["--seeds", args.seeds, "--budgets", args.budgets, "--threads", "1"]
        cmd += ["--configs", args.configs]
        if args.cache_dir:
            cmd += ["--cache-dir", args.cache_dir]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        if args.tiny:
            cmd.append("--tiny")
        if args.fresh:
            cmd.append("--fresh")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        t = threading.Thread(target=_stream, args=(proc, f"[{n[:12]}]"), daemon=True)
        t.start()
        procs.append((n, proc, t))
    failed = []
    for n, proc, t in procs:
        proc.wait()
        t.join()
        if proc.returncode:
            failed.append(n)
    if failed:
        raise SystemExit(f"oracle child failed for {', '.join(failed)}")
    runs: dict = {}
    for n in names:
        runs.update(json.loads(parts[n].read_text())["runs"])
    return runs


def _part_path(args, name: str) -> Path:
    root = Path(args.cache_dir) if args.cache_dir else real_cases.default_cache_dir()
    return root / "oracle_parts" / f"{name}{'_tiny' if args.tiny else ''}.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cache-dir", default=None, help="real_cases cache (default ~/.cache/...)")
    ap.add_argument("--epochs", type=int, default=None, help="override EPOCHS for every budget")
    ap.add_argument("--seeds", default=",".join(map(str, real_cases.SEEDS)))
    ap.add_argument("--budgets", default=",".join(map(str, real_cases.BUDGETS)))
    ap.add_argument("--cases", default=",".join(real_cases.CASE_NAMES))
    ap.add_argument("--tiny", action="store_true", help="2 epochs, 2 LRs, 1 seed, budget 10")
    ap.add_argument("--fresh", action="store_true", help="ignore a previous results file")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--jobs", type=int, default=2, help="processes, one case each (default 2)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="subset of configurations")
    ap.add_argument(
        "--extra",
        default="",
        help="with --merge-only: comma-separated result files whose records override the parts",
    )
    ap.add_argument(
        "--merge-only",
        action="store_true",
        help="write --out from the per-case part files as they are, training nothing",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    budgets = tuple(int(b) for b in args.budgets.split(","))
    names = tuple(args.cases.split(","))
    grid = dict(GRID)
    if args.tiny:
        seeds, budgets, args.epochs = seeds[:1], budgets[:1], 2
        grid = {k: v[-2:] for k, v in grid.items()}
        args.seeds, args.budgets = ",".join(map(str, seeds)), ",".join(map(str, budgets))
    epochs = {b: _epochs_for(b, args.epochs) for b in budgets}
    out = args.out or (
        Path(tempfile.gettempdir()) / "oracle_tiny.json" if args.tiny else DEFAULT_OUT
    )
    configs = tuple(args.configs.split(","))
    settings = {
        "configs": list(configs),
        "grid": {k: list(v) for k, v in grid.items() if k in names},
        "epochs_per_budget": {str(b): e for b, e in epochs.items()},
        "batch": BATCH,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "backbone_ratio": BACKBONE_RATIO,
        "discriminative_factor": DISCRIMINATIVE_FACTOR,
        "val_per_class": real_cases.VAL_PER_CLASS,
        "max_test": real_cases.MAX_TEST,
        "image_size": real_cases.IMAGE_SIZE,
        "seeds": list(seeds),
        "budgets": list(budgets),
    }
    runs: dict = {}
    if out.exists() and not args.fresh:
        old = json.loads(out.read_text())
        if old.get("settings") == settings:
            runs = old.get("runs", {})
            print(f"resuming: {len(runs)} configurations already in {out}", flush=True)
    t_start = time.perf_counter()
    all_cases = real_cases.cases(args.cache_dir, names=names, budgets=budgets, seeds=seeds)
    # seed-major order: after the first pass every (case, budget) has one seed
    all_cases.sort(key=lambda c: (c.seed, names.index(c.name), c.budget))
    info = {
        c.name: {
            "description": c.description,
            "model_spec": c.model_spec,
            "head": c.head,
            "stages": list(c.stages),
            "image_size": c.image_size,
            "mean": list(c.mean),
            "std": list(c.std),
            "source_dir": str(c.source_dir),
            "trainable_stages": {k: list(trainable_stages(k, tuple(c.stages))) for k in CONFIGS},
        }
        for c in all_cases
    }
    target_dirs = {c.key: str(c.target_dir) for c in all_cases}
    wall = {"seconds": 0.0}
    added: dict = {}  # configurations outside ``configs`` that merged files hold, and why

    def save(final: bool = False) -> dict:
        summary = summarise(runs)
        doc = {
            "about": "benchmarks/oracle_recommend.py: independent oracle over benchmarks/real_cases.py",
            "settings": settings,
            "torch": torch.__version__,
            "threads_per_process": args.threads if args.child or args.jobs < 2 else 1,
            "processes": 1 if args.child or args.jobs < 2 else min(args.jobs, len(names)),
            "cases": info,
            "target_dirs": target_dirs,
            "complete": final,
            "train_seconds_total": round(sum(r["seconds"] for r in runs.values()), 1),
            "wall_seconds_this_run": round(wall["seconds"], 1),
            "runs": runs,
            "summary": summary,
        }
        if added:
            doc["added_configs"] = added
        _atomic_json(doc, out)
        return summary

    def on_config(key, record):
        runs[key] = record
        save()

    if args.merge_only:
        for n in names:
            part = _part_path(args, n)
            if part.exists():
                runs.update(json.loads(part.read_text())["runs"])
        for extra in filter(None, args.extra.split(",")):
            doc = json.loads(Path(extra).read_text())
            # Its own configurations and those merged into it before (not the probe an
            # LP-FT-only run adds).
            keep = set(doc["settings"]["configs"]) | set(doc.get("added_configs") or {})
            added.update(doc.get("added_configs") or {})
            runs.update({k: r for k, r in doc["runs"].items() if r["config"] in keep})
    elif args.jobs > 1 and len(names) > 1 and not args.child:
        runs.update(_run_children(args, names, out))
    else:
        for case in all_cases:
            run_block(case, grid[case.name], epochs[case.budget], runs, on_config, t_start, configs)
    wall["seconds"] = time.perf_counter() - t_start
    expected = {f"{c.key}/{k}" for c in all_cases for k in configs}
    summary = save(final=expected <= set(runs))
    if not args.child:
        print_table(summary)
        print_front(summary)
    print(
        f"wall time {wall['seconds']:.0f}s ({wall['seconds'] / 60:.1f} min); "
        f"training seconds summed over configurations "
        f"{sum(r['seconds'] for r in runs.values()):.0f}; results in {out}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
