"""Built-in demo domains made from scikit-learn's bundled digits (offline).

The 1797 8x8 digits (values 0..16) are split into two disjoint, stratified
halves with a fixed seed. The *source* half is ``demo:digits``; the *target*
half is the base of every shifted domain, so a shifted domain never shares an
original digit with the source. Images are scaled to [0, 1] and upsampled
(bilinear) to 32 x 32, one channel.

Shifts, from the input level to the output level:

- ``digits-noise``: Gaussian blur then additive Gaussian pixel noise (input).
- ``digits-invert``: inverted contrast ``1 - x`` (input).
- ``digits-rotate``: rotated by 180 degrees (features: local stroke and edge
  statistics are those of the source, so early layers barely see a gap; the
  digit shapes are upside down, which deeper layers do see).
- ``digits-relabel``: the target images unchanged, with a new labelling
  that mixes digit identity with stroke weight (output).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "DEMO_DOMAINS",
    "NOISE_BLUR_SIGMA",
    "NOISE_STD",
    "SHIFT_SEED",
    "SIZE",
    "SPLIT_SEED",
    "TensorImageDataset",
    "demo_arrays",
]

SPLIT_SEED = 0  # which digits go to the source half and which to the target half
SHIFT_SEED = 1  # pixel noise and the relabel pairing
SIZE = 32
NOISE_BLUR_SIGMA = 1.0  # pixels at 32 x 32
NOISE_STD = 0.15  # additive Gaussian noise, on the [0, 1] pixel scale

DEMO_DOMAINS: dict[str, str] = {
    "demo:digits": "source: half of scikit-learn's digits, clean (10 classes)",
    "demo:digits-noise": "target: the other half, Gaussian blur and pixel noise (input-level shift)",
    "demo:digits-invert": "target: the other half, inverted contrast 1 - x (input-level shift)",
    "demo:digits-rotate": "target: the other half, rotated 180 degrees (feature-level shift)",
    "demo:digits-relabel": (
        "target: the other half, images unchanged, relabelled as 5 digit pairs x stroke weight "
        "(ink above or below the digit's median): 10 balanced classes (output-level shift)"
    ),
}


class TensorImageDataset(Dataset):
    """Images held in one tensor: item ``i`` is ``(images[i], int(targets[i]))``.

    ``images`` is float32 (N, C, H, W) in [0, 1]; ``targets`` an int64 numpy
    array (-1 for unlabelled items). Batch code may read both directly.
    """

    def __init__(self, images: torch.Tensor, targets: np.ndarray, classes: list[str] | None):
        self.images = images
        self.targets = targets
        self.classes = classes

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        # One gather for the batch (DataLoader's batched fetch), not one view per item.
        images = self.images[torch.as_tensor(indices, dtype=torch.long)]
        return list(zip(images.unbind(0), self.targets[indices].tolist()))


def _stratified_halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    source, target = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        half = (len(idx) + 1) // 2
        source.append(idx[:half])
        target.append(idx[half:])
    return np.sort(np.concatenate(source)), np.sort(np.concatenate(target))


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(np.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))


def _relabel(raw: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, list[str]]:
    """Digit pairs x stroke weight: 10 balanced classes a linear read-out of digits cannot give.

    A fixed seeded pairing of the ten digits makes five pairs; within each
    digit the images with more ink than that digit's median are "heavy", the
    rest "light". The demo CNN's pretraining jitters stroke weight, so its
    top layers learn to ignore ink amount while early and middle layers keep
    it: the last layer decodes this labelling worse than the middle ones,
    although the images are distributed exactly like the source.
    """
    order = np.random.default_rng(seed).permutation(10)
    pairs = [tuple(sorted(int(d) for d in order[2 * k : 2 * k + 2])) for k in range(5)]
    pair_of = {d: k for k, pair in enumerate(pairs) for d in pair}
    ink = raw.reshape(len(raw), -1).sum(axis=1)
    heavy = np.zeros(len(y), dtype=bool)
    for d in range(10):
        idx = np.flatnonzero(y == d)
        # Rank, not a threshold, so ties at the median still split the digit evenly.
        ranked = idx[np.argsort(ink[idx], kind="stable")]
        heavy[ranked[len(ranked) // 2 :]] = True
    labels = np.array([2 * pair_of[int(d)] for d in y], dtype=np.int64) + heavy
    classes = [f"{a}|{b}-{w}" for a, b in pairs for w in ("light", "heavy")]
    return labels.astype(np.int64), classes


@lru_cache(maxsize=1)
def demo_arrays() -> dict[str, tuple[torch.Tensor, np.ndarray, list[str], np.ndarray]]:
    """All demo domains: name -> (images N x 1 x 32 x 32, labels, classes, original indices).

    Built once per process (well under a second). The original indices
    point into ``sklearn.datasets.load_digits()`` so tests can check the
    halves are disjoint.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = digits.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    y = digits.target.astype(np.int64)
    src, tgt = _stratified_halves(y, SPLIT_SEED)
    x = torch.from_numpy(raw / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0.0, 1.0).contiguous()
    digit_classes = [str(d) for d in range(10)]
    base = x[tgt]

    gen = torch.Generator().manual_seed(SHIFT_SEED)
    noisy = _gaussian_blur(base, NOISE_BLUR_SIGMA)
    noisy = (noisy + NOISE_STD * torch.randn(noisy.shape, generator=gen)).clamp(0.0, 1.0)
    relabels, relabel_classes = _relabel(raw[tgt], y[tgt], SHIFT_SEED)

    return {
        "demo:digits": (x[src].clone(), y[src], digit_classes, src),
        "demo:digits-noise": (noisy.contiguous(), y[tgt], digit_classes, tgt),
        "demo:digits-invert": ((1.0 - base).contiguous(), y[tgt], digit_classes, tgt),
        "demo:digits-rotate": (
            torch.rot90(base, k=2, dims=(2, 3)).contiguous(),
            y[tgt],
            digit_classes,
            tgt,
        ),
        "demo:digits-relabel": (base.clone(), relabels, relabel_classes, tgt),
    }
