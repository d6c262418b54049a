"""Does the assessment-only recommendation pick the strategy that measures best?

For each demo target: run ``assess`` alone (its recommendation is the
prediction), then every strategy (``compare``), and print the predicted
strategy, the measured best, the regret of following the prediction
(validation and test accuracy of the measured best minus the predicted one's)
and the compute the prediction saves against running everything. Goal: a
regret within 1 point on every target. Several seeds give the spread.

    python benchmarks/bench_recommend.py [--quick] [--seeds N] [--epochs N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from diagnose.compare import compare
from diagnose.demo import DEMO_SOURCE, DEMO_TARGETS
from diagnose.models import load_model

GOAL = 0.01


def _by_name(strategies: list[dict]) -> dict[str, dict]:
    return {s["name"]: s for s in strategies if s.get("status") == "ok"}


def _acc(entry: dict | None, key: str) -> float | None:
    return None if entry is None else (entry.get("target") or {}).get(key)


def run_one(loaded, target: str, seed: int, epochs: int) -> dict:
    t0 = time.perf_counter()
    res = compare(loaded, DEMO_SOURCE, target, epochs=epochs, seed=seed, progress=False).to_dict()
    wall = time.perf_counter() - t0
    predicted = res["recommendation"]["strategy"]
    measured = res["comparison_recommendation"]["strategy"]
    runs = _by_name(res["strategies"])
    total_flops = sum((s.get("cost") or {}).get("flops") or 0 for s in runs.values())
    pred_flops = ((runs.get(predicted) or {}).get("cost") or {}).get("flops")
    row = {
        "target": target,
        "seed": seed,
        "predicted": predicted,
        "measured": measured,
        "regret_val": None,
        "regret_test": None,
        "saved": None if not total_flops or pred_flops is None else 1 - pred_flops / total_flops,
        "compare_s": wall,
    }
    best, pred = runs.get(measured), runs.get(predicted)
    if best is not None and pred is not None:
        row["regret_val"] = _acc(best, "val_accuracy") - _acc(pred, "val_accuracy")
        row["regret_test"] = _acc(best, "test_accuracy") - _acc(pred, "test_accuracy")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 2 epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    seeds = 1 if args.quick else args.seeds
    epochs = 2 if args.quick else args.epochs
    loaded = load_model("demo", progress=False)
    rows = [run_one(loaded, t, s, epochs) for t in DEMO_TARGETS for s in range(seeds)]
    print(
        f"{epochs} epochs per strategy, seeds 0..{seeds - 1}; regret = measured best minus predicted"
    )
    head = f"{'target':<22}{'seed':>5}  {'predicted':<19}{'measured best':<19}{'regret val':>11}{'regret test':>12}{'FLOPs saved':>12}  goal  met"
    print(head)
    print("-" * len(head))
    for r in rows:
        rv = "-" if r["regret_val"] is None else f"{r['regret_val']:+.3f}"
        rt = "-" if r["regret_test"] is None else f"{r['regret_test']:+.3f}"
        saved = "-" if r["saved"] is None else f"{100 * r['saved']:.0f}%"
        met = r["regret_val"] is not None and r["regret_val"] <= GOAL
        print(
            f"{r['target']:<22}{r['seed']:>5}  {r['predicted']:<19}{r['measured']:<19}{rv:>11}{rt:>12}{saved:>12}  <=1pt {'yes' if met else 'MISSED'}"
        )
    for target in DEMO_TARGETS:
        vals = [
            r["regret_val"] for r in rows if r["target"] == target and r["regret_val"] is not None
        ]
        if len(vals) > 1:
            print(
                f"{target}: regret (val) mean {statistics.mean(vals):+.3f}, sd {statistics.stdev(vals):.3f} over {len(vals)} seeds"
            )


if __name__ == "__main__":
    main()
