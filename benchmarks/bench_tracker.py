"""What diagnose.ForgettingTracker costs inside a training loop (issue 11).

For a model and a batch size, times one plain training step (forward,
backward, SGD step on a batch of ``--batch`` images) and one
``tracker.measure`` at the default ``n_images`` (64), each the best of
``--repeats``, and prints:

- ``measure / step``: one measurement in training steps;
- the overhead of measuring every k steps (``measure / (k * step)``) for
  several k, and the smallest k that keeps it at or under the 5% goal.

The goal (at most 5% of the training time) is met by measuring no more often
than that k; the Lightning callback's default (once per validation epoch)
measures once per epoch, which is k = steps per epoch.

    OMP_NUM_THREADS=1 python benchmarks/bench_tracker.py [--models demo,resnet18] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from _timing import best_time  # noqa: E402

import diagnose  # noqa: E402
from diagnose.models import replace_module  # noqa: E402

GOAL = 0.05
EVERY = (1, 10, 25, 50, 100)


def _case(name: str):
    """(loaded model, source spec, image size)."""
    if name == "demo":
        return diagnose.load_model("demo", progress=False), "demo:digits", None
    if name == "resnet18":
        return diagnose.load_model("torchvision:resnet18", weights="random"), "demo:digits", 64
    raise ValueError(f"unknown model {name!r}: demo or resnet18")


def measure_case(name: str, batch: int, repeats: int) -> dict:
    loaded, source, size = _case(name)
    tracker = diagnose.ForgettingTracker(loaded, source, image_size=size, seed=0)
    model = loaded.model
    head = loaded.head
    replace_module(model, head, nn.Linear(model.get_submodule(head).in_features, 10))
    x = torch.randn(batch, *tracker.meter.source_x.shape[1:])
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step_s, _ = best_time(step, repeats, warmup=True)
    measure_s, _ = best_time(lambda: tracker.measure(model), repeats, warmup=True)
    ratio = measure_s / step_s
    return {
        "model": name,
        "image_size": list(tracker.meter.source_x.shape[2:]),
        "batch": batch,
        "n_images": tracker.n_images,
        "step_s": step_s,
        "measure_s": measure_s,
        "measure_over_step": ratio,
        "overhead_every": {str(k): ratio / k for k in EVERY},
        "min_every_for_goal": math.ceil(ratio / GOAL),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("--quick", action="store_true", help="the demo CNN only, 3 repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.repeats = "demo", 3
    rows = [measure_case(m, args.batch, args.repeats) for m in args.models.split(",")]
    print(
        f"\n{'model':<10}{'px':>4}{'step (ms)':>11}{'measure (ms)':>14}{'measure/step':>14}"
        + "".join(f"{'every ' + str(k):>10}" for k in EVERY)
        + f"{'k for 5%':>10}"
    )
    for r in rows:
        print(
            f"{r['model']:<10}{r['image_size'][0]:>4}{1e3 * r['step_s']:>11.1f}"
            f"{1e3 * r['measure_s']:>14.1f}{r['measure_over_step']:>14.2f}"
            + "".join(f"{r['overhead_every'][str(k)]:>10.1%}" for k in EVERY)
            + f"{r['min_every_for_goal']:>10}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
