"""Benchmark of large-N capture: bounded memory on disk, and subsamples that agree.

Part 1, peak memory. The demo CNN (``diagnose``'s architecture, random init)
captures its four blocks from synthetic 1x32x32 images that an
IterableDataset makes batch by batch (the inputs never exist as one array),
with ``capture(max_memory=...)`` so the features stream to ``.npy`` files.
Each N runs in its own subprocess, which reports its own peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), wall time and bytes on
disk. Goal: peak(N=1,000,000) / peak(N=100,000) < 1.2. The children run with
``MALLOC_MMAP_THRESHOLD_=131072``: glibc's default dynamic threshold makes the
peak depend on heap fragmentation by the freed activation buffers (measured
on this machine: the same in-memory 100k capture peaked at 2.4 GB once and
0.9 GB with the pinned threshold). For contrast, one
in-memory capture (no budget) at the small N shows what the features would
cost in RAM.

Part 2, subsample agreement on a structured synthetic problem (10 classes,
class-dependent signal plus noise, so the probe is not trivially perfect),
its features captured to disk (N rows per domain through a small MLP):

* linear probe accuracy on all stored rows (80/20 split, memmaps) vs on a
  random subsample of max(N/10, 10,000) rows: Wilson 95% intervals of both, agreement = the
  intervals overlap;
* MMD² (RBF, σ from the median heuristic, fixed for both) between a source
  and a slightly shifted target: ``probes.domain_gap``'s 2,000-row subsample
  (with its permutation p-value) vs the unbiased MMD² on every row (blocked
  exact sums); the spread of the subsample estimate is the standard
  deviation over repeated subsamples; agreement = |full - subsample mean| <=
  2 sd;
* PAD: the same, full vs 2,000-row subsamples;
* linear CKA between two layers: ``probes.MinibatchCKA`` over all rows vs
  debiased ``probes.cka`` on 2,000-row subsamples (same spread rule).

Run ``python benchmarks/bench_large_n.py`` (``--quick``: N = 10,000 and
100,000 at 16x16 pixels, and a smaller Part 2). Exit code 0: a report; a
missed goal prints MISSED.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probes  # noqa: E402
from diagnose.models import DemoCNN  # noqa: E402


class SyntheticImages(IterableDataset):
    """``n`` seeded random images (1 x size x size) with labels, made one batch at a time."""

    def __init__(self, n: int, size: int, batch: int, seed: int = 0) -> None:
        self.n, self.size, self.batch, self.seed = n, size, batch, seed

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.n, self.batch):
            b = min(self.batch, self.n - start)
            yield (
                torch.rand(b, 1, self.size, self.size, generator=gen),
                torch.randint(0, 10, (b,), generator=gen),
            )


def child(n: int, size: int, budget: str | None, batch: int) -> None:
    """One capture pass in this process; prints a JSON line with its own peak RSS."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DemoCNN().eval()
    data = DataLoader(SyntheticImages(n, size, batch), batch_size=None)  # batches as made
    t0 = time.perf_counter()
    feats = probes.capture(
        model, data, ["block1", "block2", "block3", "block4"], max_memory=budget, progress=False
    )
    wall = time.perf_counter() - t0
    disk = 0
    if feats.store_dir is not None:
        disk = sum(p.stat().st_size for p in Path(feats.store_dir).iterdir())
    summary = feats.to_dict()
    feats.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "n": n,
                "storage": summary["storage"],
                "feature_bytes": summary["bytes"],
                "disk_bytes": disk,
                "peak_rss_mib": peak_kib / 1024,
                "wall_s": wall,
            }
        )
    )


def run_child(n: int, size: int, budget: str | None, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), "--size", str(size), "--batch", str(batch)]
    if budget is not None:
        cmd += ["--budget", budget]
    # Pin glibc's mmap threshold: by default it rises to the size of the largest freed
    # block (a batch's activations, tens of MB), after which those blocks come from the
    # heap and its fragmentation adds hundreds of MB of noise to the peak, unrelated to N.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def part1(ns: list[int], size: int, budget: str, batch: int) -> None:
    print(f"Part 1: capture of the demo CNN's 4 blocks (D = 240), {size}x{size} synthetic images")
    print(f"        max_memory={budget}, batch {batch}, 1 thread, one subprocess per row\n")
    rows = [run_child(ns[0], size, None, batch)] + [run_child(n, size, budget, batch) for n in ns]
    print(
        f"{'N':>10} {'storage':>8} {'peak RSS MiB':>13} {'wall s':>8} {'us/img':>7} {'disk MB':>9}"
    )
    for r in rows:
        print(
            f"{r['n']:>10,} {r['storage']:>8} {r['peak_rss_mib']:>13.1f} {r['wall_s']:>8.1f} "
            f"{1e6 * r['wall_s'] / r['n']:>7.1f} {r['disk_bytes'] / 1e6:>9.1f}"
        )
    small, large = rows[1], rows[-1]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    verdict = "met" if ratio < 1.2 else "MISSED"
    print(
        f"\npeak RSS ratio N={large['n']:,} / N={small['n']:,} on disk: {ratio:.3f} "
        f"(goal < 1.2: {verdict}); N grows {large['n'] // small['n']}x."
    )
    extra = rows[0]["peak_rss_mib"] - small["peak_rss_mib"]
    print(
        f"in memory at N={small['n']:,} the same capture peaks {extra:+.1f} MiB above the disk "
        f"path (features: {small['feature_bytes'] / 2**20:.1f} MiB; x10 at 10x N)."
    )


# ----------------------------------------------------------------------------- part 2


def structured(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes: a class mean of norm ~2.2 in 32 dims plus unit noise (probe well below 1.0)."""
    means = torch.Generator().manual_seed(123)
    centres = 0.4 * torch.randn(10, 32, generator=means)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    x = centres[y] + torch.randn(n, 32, generator=gen)
    x[:, :4] += shift  # the target domain: a small shift in 4 of 32 directions
    return x, y


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh())


def stored(x: torch.Tensor, y: torch.Tensor, where: Path) -> probes.CapturedFeatures:
    batches = [(x[i : i + 4096], y[i : i + 4096]) for i in range(0, len(x), 4096)]
    return probes.capture(mlp(), batches, ["1", "3"], store_dir=where, progress=False)


def full_mmd2(s: np.ndarray, t: np.ndarray, sigma: float, block: int = 4096) -> float:
    """Unbiased MMD² on every row, with exact blocked kernel sums (float64 accumulation)."""

    def kernel_sum(a: np.ndarray, b: np.ndarray, same: bool) -> float:
        total = 0.0
        for i in range(0, len(a), block):
            ai = np.asarray(a[i : i + block], dtype=np.float64)
            an = (ai * ai).sum(1)
            for j in range(0, len(b), block):
                bj = np.asarray(b[j : j + block], dtype=np.float64)
                d2 = np.maximum(an[:, None] + (bj * bj).sum(1)[None, :] - 2.0 * ai @ bj.T, 0.0)
                total += float(np.exp(-d2 / (2.0 * sigma**2)).sum())
        return total - (len(a) if same else 0.0)  # drop the diagonal k(x, x) = 1

    n, m = len(s), len(t)
    return (
        kernel_sum(s, s, True) / (n * (n - 1))
        + kernel_sum(t, t, True) / (m * (m - 1))
        - 2.0 * kernel_sum(s, t, False) / (n * m)
    )


def part2(n: int, repeats: int) -> None:
    print(f"\nPart 2: subsample vs all {n:,} stored rows per domain (structured, 10 classes)\n")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-large-n-") as tmp:
        xs, ys = structured(n, seed=1)
        xt, _ = structured(n, seed=2, shift=0.15)
        src = stored(xs, ys, Path(tmp) / "source")
        tgt = stored(xt, ys, Path(tmp) / "target")
        assert src.storage == "disk" and isinstance(src["3"], np.memmap)
        rng = np.random.default_rng(0)
        rows = []

        # Linear probe: 80/20 split of all rows vs of a random subsample of max(N/10, 10,000) rows.
        def probe(idx: np.ndarray):
            cut = int(0.8 * len(idx))
            tr, te = np.sort(idx[:cut]), np.sort(idx[cut:])
            if len(idx) == n:  # every row: hand linear_probe the stored memmaps
                xa = np.lib.format.open_memmap(Path(tmp) / "tr.npy", "w+", np.float32, (cut, 32))
                xa[:] = src["3"][tr]
                xb = np.lib.format.open_memmap(
                    Path(tmp) / "te.npy", "w+", np.float32, (len(te), 32)
                )
                xb[:] = src["3"][te]
                return probes.linear_probe(xa, src.labels[tr], xb, src.labels[te])
            return probes.linear_probe(src["3"][tr], src.labels[tr], src["3"][te], src.labels[te])

        t0 = time.perf_counter()
        order = rng.permutation(n)
        full = probe(order)
        t_full = time.perf_counter() - t0
        sub = probe(order[: max(n // 10, 10_000)])
        overlap = full.ci[0] <= sub.ci[1] and sub.ci[0] <= full.ci[1]
        rows.append(
            (
                "probe accuracy",
                f"{full.accuracy:.4f} [{full.ci[0]:.4f}, {full.ci[1]:.4f}]",
                f"{sub.accuracy:.4f} [{sub.ci[0]:.4f}, {sub.ci[1]:.4f}]",
                f"Wilson CIs {'overlap' if overlap else 'DISJOINT'}",
                overlap,
                t_full,
            )
        )

        # MMD² and PAD: domain_gap on 2,000-row subsamples vs every row.
        gaps = [
            probes.domain_gap(src["3"], tgt["3"], n_permutations=200 if k == 0 else 0, seed=k)
            for k in range(repeats)
        ]
        sigma = gaps[0].mmd_bandwidth
        # The exact all-pairs MMD² is O(N²): it runs on a pool of n_mmd rows per domain,
        # and the fixed-σ subsamples are drawn from that same pool.
        n_mmd = min(n, 20_000)
        pool_s, pool_t = np.asarray(src["3"][:n_mmd]), np.asarray(tgt["3"][:n_mmd])
        fixed = []
        for k in range(repeats):
            pick = np.random.default_rng(k)
            a = pool_s[np.sort(pick.choice(n_mmd, 2000, replace=False))]
            b = pool_t[np.sort(pick.choice(n_mmd, 2000, replace=False))]
            fixed.append(probes.mmd2(a, b, bandwidth=sigma, n_permutations=0).mmd2)
        t0 = time.perf_counter()
        mmd_full = full_mmd2(pool_s, pool_t, sigma)
        t_mmd = time.perf_counter() - t0
        mean, sd = float(np.mean(fixed)), float(np.std(fixed, ddof=1))
        ok = abs(mmd_full - mean) <= 2 * sd
        rows.append(
            (
                f"MMD² (σ fixed, {n_mmd // 1000}k pool)",
                f"{mmd_full:.5f}",
                f"{mean:.5f} ± {sd:.5f} (p={gaps[0].mmd_pvalue:.4f})",
                f"|Δ| = {abs(mmd_full - mean) / sd:.2f} sd",
                ok,
                t_mmd,
            )
        )
        t0 = time.perf_counter()
        pad_full = probes.proxy_a_distance(src["3"], tgt["3"]).pad
        t_pad = time.perf_counter() - t0
        pads = [g.pad for g in gaps]
        mean, sd = float(np.mean(pads)), float(np.std(pads, ddof=1))
        ok_pad = abs(pad_full - mean) <= 2 * sd
        rows.append(
            (
                "PAD",
                f"{pad_full:.4f}",
                f"{mean:.4f} ± {sd:.4f}",
                f"|Δ| = {abs(pad_full - mean) / sd:.2f} sd",
                ok_pad,
                t_pad,
            )
        )

        # CKA between the two stored layers: MinibatchCKA over every row vs subsamples.
        t0 = time.perf_counter()
        metric = probes.MinibatchCKA()
        for i in range(0, n - n % 1024, 1024):
            metric.update(src["1"][i : i + 1024], src["3"][i : i + 1024])
        cka_full = metric.compute()
        t_cka = time.perf_counter() - t0
        ckas = []
        for k in range(repeats):
            idx = np.sort(np.random.default_rng(100 + k).choice(n, 2000, replace=False))
            ckas.append(probes.cka(src["1"][idx], src["3"][idx], debiased=True))
        mean, sd = float(np.mean(ckas)), float(np.std(ckas, ddof=1))
        ok_cka = abs(cka_full - mean) <= 2 * sd
        rows.append(
            (
                "CKA (layer 1 vs 3)",
                f"{cka_full:.5f} ({metric.n_batches} x 1024)",
                f"{mean:.5f} ± {sd:.5f}",
                f"|Δ| = {abs(cka_full - mean) / sd:.2f} sd",
                ok_cka,
                t_cka,
            )
        )
        src.close()
        tgt.close()

    print(f"{'measure':<26} {'all rows':<28} {'subsample':<36} {'agreement':<22} {'full s':>7}")
    for name, a, b, how, ok, secs in rows:
        print(f"{name:<26} {a:<28} {b:<36} {how + ('' if ok else ' MISSED'):<22} {secs:>7.1f}")
    print(
        f"\nsubsamples: probe max(N/10, 10,000) rows (Wilson 95% CIs); MMD²/PAD 2,000 rows per domain and "
        f"CKA 2,000 rows, spread = sd over {repeats} subsamples; agreement = within 2 sd."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--budget", default=None)
    parser.add_argument("--part", choices=["1", "2", "both"], default="both")
    args = parser.parse_args()
    size = args.size or (16 if args.quick else 32)
    if args.child is not None:
        child(args.child, size, args.budget, args.batch)
        return
    ns = [10_000, 100_000] if args.quick else [100_000, 1_000_000]
    if args.part in ("1", "both"):
        part1(ns, size, args.budget or ("4MB" if args.quick else "16MB"), args.batch)
    if args.part in ("2", "both"):
        part2(20_000 if args.quick else 100_000, repeats=8 if args.quick else 20)
    print(
        f"\n(cores: {os.cpu_count()}, torch {torch.__version__}; timings are noisy on a shared machine)"
    )


if __name__ == "__main__":
    main()
