"""The trial race's promises, measured: its budget held on every target, and its engine near the floor.

Rows (``perf_suite.py`` adds them under ``race``):

- **budget held**: ``diagnose.assess`` at ``--trial-budget`` 0.2 (the default)
  and 0.05 on the demo at ``--max-samples 40``, the demo at full size, and two
  24-image targets (3 classes x 8, 32 px): a torchvision ResNet-18 and a timm
  ViT-tiny, random init. Ratio: FLOPs spent / the full sweep's estimate. Goal:
  at most the budget. The note carries the wall time of ``assess`` and the
  race's share of it, and what was cut to fit.
- **race trial vs plain loop**: one trial of the race (``full_low_lr``, the
  24-image ResNet-18 target's first fold, 50 epochs) against a plain PyTorch
  loop with the same model copy, SGD with momentum and weight decay, per-group
  LRs, cosine schedule, batches and epochs, then the same held-out forward.
  Goal <= 1.15.
- **compare run vs plain loop**: ``full_low_lr`` as ``diagnose compare`` runs it
  (per-epoch validation, forgetting on held-out source images, weight drift,
  best-state snapshot) against the same plain loop, on the demo target and the
  24-image ResNet-18 target. Goal <= 1.5.

    python benchmarks/bench_race.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

__all__ = ["rows_budget", "row_trial_floor", "rows_compare_floor", "tiny_target"]

TINY_SIZE = 32


class _Blobs(Dataset):
    """3 classes x ``n`` images at 32 px: a bright band whose row and colour is the class."""

    def __init__(self, n: int, seed: int, shift: float):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for c in range(3):
            for _ in range(n):
                img = torch.rand(3, TINY_SIZE, TINY_SIZE, generator=g) * 0.5 + shift
                band = (c * TINY_SIZE) // 3
                img[c, band : band + TINY_SIZE // 3, :] += 0.5
                self.items.append((img.clamp(0, 1), c))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def tiny_target() -> Dataset:
    """The 24-image target (``bench_race:tiny_target``)."""
    return _Blobs(8, seed=2, shift=0.2)


def tiny_source() -> Dataset:
    """48 source images of the same classes, unshifted (``bench_race:tiny_source``)."""
    return _Blobs(16, seed=1, shift=0.0)


def _budget_row(name: str, model: str, source: str, target: str, budget: float, **kw) -> dict:
    import diagnose

    t0 = time.perf_counter()
    res = diagnose.assess(
        model, source, target, progress=False, trial_budget=budget, **kw
    ).to_dict()
    wall = time.perf_counter() - t0
    t = res["recommendation"]["trials"]
    frac = t["flops_spent"] / t["full_flops_estimate"]
    cuts = "; ".join(f"{c['kind']} {c['before']}->{c['after']}" for c in t.get("cuts") or [])
    return {
        "row": f"race budget held: {name} at {budget:g}",
        "ours": f"{t['flops_spent'] / 1e9:.1f} GFLOPs",
        "peer": f"{t['full_flops_estimate'] / 1e9:.1f} GFLOPs (full sweep)",
        "ratio": f"{frac:.3f}",
        "goal": f"<= {budget:g}",
        "met": frac <= budget + 1e-9,
        "note": f"assess {wall:.0f} s, race {t['wall_s']:.0f} s ({t['wall_s'] / wall:.0%}); "
        f"{len(t['candidates'])} candidates, rungs {t['rung_epochs']}, pick {t['pick']}; "
        f"cuts: {cuts or 'none'}; unbracketed: {', '.join(t.get('unbracketed') or []) or 'none'}",
    }


def rows_budget(quick: bool) -> list[dict]:
    """Budget rows over the targets this repository runs offline (the real cases need the
    ``bench`` extra and are in ``bench_recommend_real.py``)."""
    sys.path.insert(0, HERE)
    targets = [
        ("demo, 40 images", "demo", "demo:digits", "demo:digits-noise", {"max_samples": 40}),
        ("ResNet-18, 24 images", "torchvision:resnet18", "bench_race:tiny_source",
         "bench_race:tiny_target", {"weights": "random", "image_size": TINY_SIZE}),
        ("ViT-tiny, 24 images", "timm:vit_tiny_patch16_224", "bench_race:tiny_source",
         "bench_race:tiny_target", {"weights": "random", "image_size": TINY_SIZE}),
    ]  # fmt: skip
    if not quick:
        targets.insert(1, ("demo, full", "demo", "demo:digits", "demo:digits-noise", {}))
    rows = []
    for budget in (0.2, 0.05):
        for name, model, src, tgt, kw in targets:
            try:
                rows.append(_budget_row(name, model, src, tgt, budget, **kw))
            except ImportError as exc:  # timm is an extra
                rows.append({"row": f"race budget held: {name}", "ours": "not measured",
                             "met": None, "note": str(exc)})  # fmt: skip
    return rows


def _plain_loop(net: nn.Module, groups: dict, x, y, x_val, epochs: int, batch: int, seed: int):
    """The floor: SGD (momentum 0.9, weight decay) with per-group LRs under one cosine schedule."""
    from diagnose.training import TrainConfig

    cfg = TrainConfig()
    opt = torch.optim.SGD(
        [{"params": p, "lr": lr} for p, lr in groups.values()],
        lr=0.0,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    base = [g["lr"] for g in opt.param_groups]
    steps = epochs * max(1, len(y) // batch if len(y) % batch == 0 else math.ceil(len(y) / batch))
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
    net.eval()
    with torch.no_grad():
        return net(x_val)


def _floor_net(model: nn.Module, head: str, classes: int, lr_head: float, ratio: float):
    from diagnose.models import replace_module

    net = copy.deepcopy(model)
    old = net.get_submodule(head)
    replace_module(net, head, nn.Linear(old.in_features, classes))
    head_params = list(net.get_submodule(head).parameters())
    ids = {id(p) for p in head_params}
    body = [p for p in net.parameters() if id(p) not in ids]
    return net, {"body": (body, lr_head * ratio), "head": (head_params, lr_head)}


def _resnet_pool():
    import torchvision

    from diagnose.training import TargetData

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    ds = tiny_target()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    x = (x - 0.5) / 0.25
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:16], perm[16:]
    data = TargetData(x[tr], y[tr], x[va], y[va], x[va][:1], y[va][:1], 3)
    return model, data


def _interleaved(fns: dict, repeats: int) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def row_trial_floor(repeats: int, epochs: int = 50) -> dict:
    """One race trial of full_low_lr against the plain loop (ResNet-18, 24 images, 32 px)."""
    import probes
    from diagnose.decide.candidates import Candidate
    from diagnose.decide.race_trials import train_trial

    model, data = _resnet_pool()
    blocks = probes.discover_layers(model)
    cand = Candidate("full_low_lr", None, 0.01, "strategy", 0)
    ratio = cand.config(blocks, epochs=1, batch_size=64, seed=0).backbone_ratio

    def ours():
        train_trial(cand, data, model, "fc", blocks, epochs, 64, 0, torch.device("cpu"), {})

    def floor():
        net, groups = _floor_net(model, "fc", 3, cand.head_lr, ratio)
        _plain_loop(net, groups, data.x_train, data.y_train, data.x_val, epochs, 64, 0)

    t = _interleaved({"ours": ours, "floor": floor}, repeats)
    r = t["ours"] / t["floor"]
    return {
        "row": "race trial vs plain loop",
        "ours": f"{t['ours']:.2f} s",
        "peer": f"{t['floor']:.2f} s",
        "ratio": f"{r:.2f}",
        "goal": "<= 1.15",
        "met": r <= 1.15,
        "note": f"full_low_lr, ResNet-18 random init, 16 train / 8 held-out images at 32 px, "
        f"{epochs} epochs (one step each), medians of {repeats} interleaved runs",
    }


def _compare_row(name, model, blocks, head, data, meter, epochs, repeats) -> dict:
    from diagnose.measure import forgetting_interval
    from diagnose.training import TrainConfig, run_strategy

    cfg = TrainConfig(epochs=epochs, batch_size=64, head_lr=0.05)
    cpu = torch.device("cpu")

    def ours():
        run_strategy("full_low_lr", model, head=head, blocks=blocks, data=data, tracker=meter,
                     config=cfg, device=cpu, progress=False)  # fmt: skip

    def floor():
        net, groups = _floor_net(model, head, data.num_classes, cfg.head_lr, cfg.backbone_ratio)
        _plain_loop(net, groups, data.x_train, data.y_train, data.x_val, epochs, 64, 0)

    t = _interleaved({"ours": ours, "floor": floor}, repeats)
    r = t["ours"] / t["floor"]
    return {
        "row": f"compare run vs plain loop: {name}",
        "ours": f"{t['ours']:.2f} s",
        "peer": f"{t['floor']:.2f} s",
        "ratio": f"{r:.2f}",
        "goal": "<= 1.5",
        "met": r <= 1.5,
        "note": f"full_low_lr {epochs} epochs, {len(data.y_train)} train images; ours validates "
        f"every epoch, measures forgetting on {meter.n} source images and weight drift every "
        f"{forgetting_interval(meter.n, len(data.y_train))} epoch(s) and keeps the best state; "
        f"the floor only trains. Medians of {repeats} interleaved runs",
    }


def rows_compare_floor(repeats: int) -> list[dict]:
    """compare's full_low_lr (with per-epoch forgetting) against the plain loop, two targets."""
    import bench_compare

    import probes
    from diagnose.measure import ForgettingMeter, suggest_source_samples
    from diagnose.models import load_model

    demo = load_model("demo", progress=False).model
    data = bench_compare.target_data()
    xs, ys = bench_compare.source_images(suggest_source_samples(len(data.y_train), len(data.y_val)))
    cpu = torch.device("cpu")
    meter = ForgettingMeter(demo, head="head", blocks=bench_compare.BLOCKS, source_x=xs,
                            source_y=ys, device=cpu)  # fmt: skip
    rows = [_compare_row("demo target", demo, bench_compare.BLOCKS, "head", data, meter, 3,
                         repeats)]  # fmt: skip
    model, data = _resnet_pool()
    blocks = probes.discover_layers(model)
    src = tiny_source()
    xs = (torch.stack([src[i][0] for i in range(len(src))]) - 0.5) / 0.25
    ys = torch.tensor([src[i][1] for i in range(len(src))])
    meter = ForgettingMeter(model, head="fc", blocks=blocks, source_x=xs, source_y=ys, device=cpu)
    rows.append(_compare_row("ResNet-18, 24 images", model, blocks, "fc", data, meter, 50, repeats))
    return rows


def main(argv=None) -> int:
    from bench_compare import print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer targets and repeats")
    parser.add_argument("--skip", default="", help="comma-separated: budget,trial,compare")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    repeats = 3 if args.quick else 5
    torch.set_num_threads(1)  # tiny convolutions contend on 2 threads (as bench_compare)
    rows = []
    if "trial" not in skip:
        rows.append(row_trial_floor(repeats))
        print(rows[-1], flush=True)  # each row as it comes: the whole run takes minutes
    if "compare" not in skip:
        rows += rows_compare_floor(repeats)
        print(rows[-2:], flush=True)
    if "budget" not in skip:
        rows += rows_budget(args.quick)
    for row in rows:
        row.setdefault("name", row["row"])
    print_table(rows)
    for row in rows:
        print(f"- {row['name']}: {row.get('note', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
