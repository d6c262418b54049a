"""The performance suite: every speed claim of the toolkit, measured side by side in one run.

Rows (each against its peer or floor, on the same data in the same process):

  1. capture overhead: ``probes.capture`` on every auto-discovered layer vs a
     plain ``no_grad`` forward over the same batches (resnet18, random init,
     64 px). Goal <= 1.10.
  2. whole ``diagnose.assess`` (pretrained + random-init control capture,
     probes, gap, transferability, LR range test, RGN) vs a plain forward
     pass over the same source and target images (resnet18 at 64 px on the
     demo digits). Goal <= 2.5. The same at 224 px for information: the
     measurements cost the same at any input size, the forward does not.
  3. ``linear_probe`` vs scikit-learn ``LogisticRegressionCV`` on the same L2
     grid and folds, at equal accuracy. Goal >= 3x faster.
  4. probing every layer vs the capture pass (resnet18 64 px; the demo-like
     CNN, whose forward is nearly free, and resnet18 at 224 px for
     information). Goal < 0.10.
  5. linear CKA on N=10,000, D=2,048: ``probes.cka`` (feature-space form) and
     ``probes.MinibatchCKA`` vs the textbook N x N Gram-matrix form written
     here; time and peak memory (tracemalloc peak of the computation, inputs
     excluded, each side in a fresh child process).
  6. feature-extraction epochs on cached features vs through the backbone.
     Goal >= 20x.
  7. forgetting-tracker overhead on ``full_low_lr``. Goal <= 5%.

Timed sides are interleaved and each keeps its median (``--repeats``), so a
burst of load from other processes cannot land on one side only.

    python benchmarks/perf_suite.py [--quick] [--repeats N]

The exit code is 0 (a report); a missed goal prints MISSED.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import bench_compare  # noqa: E402
import bench_probe  # noqa: E402

from probes.capture import capture  # noqa: E402


def interleaved(fns: dict, repeats: int) -> dict:
    """Median wall time of each callable, interleaved in alternating order after a warm-up."""
    times: dict = {k: [] for k in fns}
    out: dict = {}
    for fn in fns.values():
        fn()
    keys = list(fns)
    for r in range(repeats):
        # Alternate the order (ABBA...) so neither side always runs right after the other.
        for key in keys if r % 2 == 0 else keys[::-1]:
            fn = fns[key]
            t0 = time.perf_counter()
            out[key] = fn()
            times[key].append(time.perf_counter() - t0)
    return {k: (statistics.median(v), out[k]) for k, v in times.items()}


def plain_forward(model, x, batch_size=64):
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])


def row_capture_overhead(model, x, repeats):
    res = interleaved(
        {
            "capture": lambda: capture(model, x, batch_size=64, progress=False),
            "forward": lambda: plain_forward(model, x, 64),
        },
        repeats,
    )
    (t_cap, feats), (t_fwd, _) = res["capture"], res["forward"]
    ratio = t_cap / t_fwd
    return {
        "row": f"capture ({len(feats.features)} layers) vs plain forward, resnet18 64px, N={len(x)}",
        "ours": f"{t_cap:.2f} s",
        "peer": f"{t_fwd:.2f} s",
        "ratio": f"{ratio:.2f}",
        "goal": "<= 1.10",
        "met": ratio <= 1.10,
    }


def _assess_inputs(max_samples, size):
    """The demo digits as resnet18 sees them in assess: 3 channels, ``size`` px, ImageNet-normalised."""
    from diagnose.data import load_domain

    xs = []
    for spec in ("demo:digits", "demo:digits-noise"):
        images = load_domain(spec).dataset.images[:max_samples].float()
        x = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear")
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        xs.append((x.expand(-1, 3, -1, -1) - mean) / std)
    return torch.cat(xs)


def row_assess(max_samples, repeats, size=64):
    import torchvision

    from diagnose.workflows import assess

    model = torchvision.models.resnet18()
    x = _assess_inputs(max_samples, size)

    def run_assess():
        return assess(
            "torchvision:resnet18",
            "demo:digits",
            "demo:digits-noise",
            weights="random",
            image_size=size,
            max_samples=max_samples,
            progress=False,
        )

    res = interleaved({"assess": run_assess, "forward": lambda: plain_forward(model, x)}, repeats)
    (t_assess, result), (t_fwd, _) = res["assess"], res["forward"]
    timings = result.results["environment"].get("timings_s") or {}
    parts = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if k != "total" and v >= 0.5)
    ratio = t_assess / t_fwd
    return {
        "row": f"assess vs plain forward over source+target ({len(x)} images, resnet18 {size}px)",
        "ours": f"{t_assess:.1f} s ({parts})",
        "peer": f"{t_fwd:.1f} s",
        "ratio": f"{ratio:.2f}",
        "goal": "<= 2.5",
        "met": ratio <= 2.5,
    }


# --- CKA: each side in a fresh child process, so its peak RSS is its own -------------


def _cka_data(n, d):
    rng = np.random.default_rng(0)
    # float32 throughout: no float64 temporaries to raise the RSS high-water mark early
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = (x[:, : d // 2] @ rng.standard_normal((d // 2, d), dtype=np.float32)) / np.sqrt(d)
    y += rng.standard_normal((n, d), dtype=np.float32)
    return x, y


def gram_cka(x, y):
    """Linear CKA the textbook way: N x N Gram matrices, centred, HSIC ratio (float64)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    k, l_ = x @ x.T, y @ y.T
    for m in (k, l_):  # centre in place: H K H
        m -= m.mean(axis=0, keepdims=True)
        m -= m.mean(axis=1, keepdims=True)
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def _child_cka(side, n, d):
    from probes.similarity import MinibatchCKA, cka

    x, y = _cka_data(n, d)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc; the inputs are not counted
    t0 = time.perf_counter()
    if side == "ours":
        value = cka(x, y)
    elif side == "minibatch":
        m = MinibatchCKA()
        for i in range(0, n, 1000):
            m.update(x[i : i + 1000], y[i : i + 1000])
        value = m.compute()
    else:
        value = gram_cka(x, y)
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"value": value, "wall": wall, "peak_mb": peak / 2**20}))


def _run_child(side, n, d):
    cmd = [sys.executable, __file__, "--child-cka", side, str(n), str(d)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def row_cka(n, d):
    ours, mini, gram = (_run_child(s, n, d) for s in ("ours", "minibatch", "gram"))
    agree = abs(ours["value"] - gram["value"])
    return {
        "row": f"linear CKA N={n}, D={d}: feature-space form vs N x N Gram matrices",
        "ours": f"{ours['wall']:.2f} s, +{ours['peak_mb']:.0f} MB (minibatch: {mini['wall']:.2f} s, "
        f"+{mini['peak_mb']:.0f} MB, CKA {mini['value']:.4f})",
        "peer": f"{gram['wall']:.2f} s, +{gram['peak_mb']:.0f} MB",
        "ratio": f"{gram['wall'] / ours['wall']:.1f}x faster, "
        f"{gram['peak_mb'] / max(ours['peak_mb'], 1e-3):.0f}x less memory, |dCKA| {agree:.1e}",
        "goal": "(time, memory) and |dCKA| < 1e-6",
        "met": agree < 1e-6,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller data, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side")
    parser.add_argument("--child-cka", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_cka:
        side, n, d = args.child_cka
        _child_cka(side, int(n), int(d))
        return 0
    import torchvision

    repeats = args.repeats or (2 if args.quick else 4)
    n_img = 300 if args.quick else 1000
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} CPUs; {repeats} repeat(s) per side, medians"
        + (" (quick)" if args.quick else ""),
        flush=True,
    )
    t0 = time.perf_counter()
    torch.manual_seed(0)
    rows = []
    resnet = torchvision.models.resnet18().eval()
    x, y = bench_probe._templates(n_img, 10, 3, 64, seed=1)
    rows.append(row_capture_overhead(resnet, x, 2 * repeats))  # ~1 s a call: cheap to steady
    print(f"[{time.perf_counter() - t0:.0f} s] capture overhead", flush=True)
    rows.append(row_assess(150 if args.quick else None, 1))
    # The measurements cost the same whatever the input size; the forward grows with it.
    big = row_assess(60 if args.quick else 400, 1, size=224)
    big["goal"], big["met"] = "(information)", None
    rows.append(big)
    print(f"[{time.perf_counter() - t0:.0f} s] assess", flush=True)
    rows.append(bench_probe.row_sklearn(*((2000, 256) if args.quick else (5000, 512)), repeats))
    rows.append(bench_probe.row_capture("resnet18 64x64", resnet, x, y, repeats))
    xd, yd = bench_probe._templates(n_img, 10, 1, 32, seed=2)
    demo_row = bench_probe.row_capture(
        "demo-like CNN 32x32", bench_probe._demo_like_cnn(), xd, yd, repeats
    )
    demo_row["goal"], demo_row["met"] = "(information)", None
    rows.append(demo_row)
    xb, yb = bench_probe._templates(150 if args.quick else 500, 10, 3, 224, seed=3)
    big = bench_probe.row_capture("resnet18 224x224", resnet, xb, yb, 1)
    big["goal"], big["met"] = "(information)", None
    rows.append(big)
    print(f"[{time.perf_counter() - t0:.0f} s] probes", flush=True)
    rows.append(row_cka(2000 if args.quick else 10_000, 512 if args.quick else 2048))
    print(f"[{time.perf_counter() - t0:.0f} s] CKA", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as bench_compare: tiny convolutions contend on 2 threads
    try:
        from diagnose.decide import recommended_epochs as _epochs
        from diagnose.models import load_model

        model = load_model("demo", progress=False).model
        data = bench_compare.target_data()
        fe_epochs = _epochs(len(data.y_train) / data.num_classes, "feature_extraction")
        rows.append(bench_compare.row_feature_extraction(model, data, fe_epochs, repeats))
        tracker_rows = bench_compare.row_tracker(model, data, 2 if args.quick else 5, repeats, [64])
        rows.extend(tracker_rows)
    finally:
        torch.set_num_threads(threads)
    print(f"[{time.perf_counter() - t0:.0f} s] training rows\n", flush=True)
    bench_compare.print_table(rows)
    print(f"\nsuite wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
