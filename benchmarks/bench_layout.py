"""Does the kept memory layout pick the faster one? (issue 27)

The toolkit measures NCHW against channels-last once per architecture, input
shape and pass on a machine and keeps the decision on disk
(:func:`diagnose.models.choose_layout`), so later runs never time again and
their results do not depend on the machine's load. This benchmark makes that
decision in a fresh cache directory, then times, independently, an inference
batch and a training step (new 10-way head, SGD) in both layouts on the CPU,
each the best of ``--repeats`` after a warm-up, and prints the kept layout
beside the measured speedup (NCHW time / channels-last time).

A pick is "right" when it is the faster layout, or within ``TIE`` of it.

    python benchmarks/bench_layout.py [--models demo,resnet18,...] [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import best_time  # noqa: E402

from diagnose.models import choose_layout, forget_layouts, load_model, replace_module  # noqa: E402
from probes import logits_of  # noqa: E402

# A layout within 10% of the faster one is as good: the decision's own margin (it keeps
# NCHW unless channels-last saves a tenth), and the timing noise of a few steps.
TIE = 0.10
MODELS = {
    "demo": ("demo", 32),
    "resnet18": ("torchvision:resnet18", 64),
    "resnet50": ("torchvision:resnet50", 64),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", 64),
    "efficientnet_b0": ("torchvision:efficientnet_b0", 64),
    "convnext_tiny": ("torchvision:convnext_tiny", 64),
    "vit_tiny": ("timm:vit_tiny_patch16_224", 224),
}


def _in(net: nn.Module, x: torch.Tensor, fmt: torch.memory_format):
    return copy.deepcopy(net).to(memory_format=fmt), x.contiguous(memory_format=fmt)


def infer_time(net, x, fmt, repeats) -> float:
    net, x = _in(net.eval(), x, fmt)
    with torch.no_grad():
        return best_time(lambda: net(x), repeats, warmup=True)[0]


def train_time(net, head, x, y, fmt, repeats) -> float:
    net = copy.deepcopy(net).train()
    replace_module(net, head, nn.Linear(net.get_submodule(head).in_features, 10))
    net, x = _in(net, x, fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)

    def step():
        F.cross_entropy(logits_of(net(x)), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return best_time(step, repeats, warmup=True)[0]


def row(name: str, repeats: int, batch: int) -> list[dict]:
    spec, px = MODELS[name]
    loaded = load_model(spec, weights="random", progress=False)
    net = loaded.model
    channels = 1 if spec == "demo" else 3
    x = torch.randn(batch, channels, px, px, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(1))
    out = []
    for kind in ("inference", "training"):
        forget_layouts()
        pick = choose_layout(net, x, torch.device("cpu"), training=kind == "training")
        if kind == "inference":
            t = {
                f: infer_time(net, x, getattr(torch, f), repeats)
                for f in ("contiguous_format", "channels_last")
            }
        else:
            t = {f: train_time(net, loaded.head, x, y, getattr(torch, f), repeats)
                 for f in ("contiguous_format", "channels_last")}  # fmt: skip
        speedup = t["contiguous_format"] / t["channels_last"]
        faster = "channels_last" if speedup > 1 else "contiguous"
        chosen = t["channels_last" if pick.name == "channels_last" else "contiguous_format"]
        right = chosen <= (1 + TIE) * min(t.values())
        out.append({
            "model": name, "px": px, "batch": batch, "kind": kind, "kept": pick.name,
            "reason": pick.reason, "faster": faster, "speedup_cl": round(speedup, 3),
            "right": bool(right),
        })  # fmt: skip
        print(f"{name:20s} {kind:9s} kept {pick.name:13s} faster {faster:13s} "
              f"CL speedup {speedup:.2f}x  {'ok' if right else 'MISS'}", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true", help="three models, two repeats")
    args = ap.parse_args()
    os.environ["DIAGNOSE_CACHE_DIR"] = tempfile.mkdtemp(prefix="layouts-")  # decide afresh
    if args.quick:
        args.models, args.repeats = "demo,resnet18,mobilenet_v3_small", 2
    rows = [r for m in args.models.split(",") for r in row(m, args.repeats, args.batch)]
    right = sum(r["right"] for r in rows)
    print(
        f"kept layout right (or within {TIE:.0%}) on {right} of {len(rows)}; "
        f"threads {torch.get_num_threads()}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "threads": torch.get_num_threads()}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
