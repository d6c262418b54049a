"""Image statistics per domain, their drift, and the normalisation check.

Statistics are recorded while the capture pass reads the images (no second
pass over the data): native height and width, brightness (mean pixel value
in [0, 1]) and contrast (standard deviation of the pixel values) per image,
and pooled per-channel pixel moments. Source and target are compared with a
two-sample Kolmogorov-Smirnov test per statistic.

The normalisation check asks whether the target's pixels, as the model will
see them, have the statistics the model was trained for: the mean and std
its weights expect, or, for a model without declared normalisation, those of
the source images. Feeding [0, 255] images to an ImageNet model, or inverted
contrast, are the classic silent failures this catches.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from torch.utils.data import Dataset

from diagnose.data.batches import same_shape_groups
from probes import fetch_items

__all__ = [
    "ImageStats",
    "RecordingDataset",
    "drift_table",
    "normalization_check",
]

_PER_IMAGE = ("height", "width", "brightness", "contrast")


class _Column:
    """Per-image float values keyed by dataset index, first value per index kept.

    Compact so a million-image domain stays small: 8 bytes a value (``array``)
    and one bit an index (a bitmap), instead of Python dict entries (~100 B).
    Values come back in the order they were first recorded.
    """

    def __init__(self) -> None:
        self._values = array("d")
        self._seen = bytearray()

    def has(self, index: int) -> bool:
        byte, bit = divmod(index, 8)
        return byte < len(self._seen) and bool(self._seen[byte] >> bit & 1)

    def add(self, index: int, value: float) -> None:
        byte, bit = divmod(index, 8)
        if byte >= len(self._seen):  # grow geometrically: amortised O(1)
            self._seen.extend(bytes(max(byte + 1 - len(self._seen), len(self._seen))))
        if not self._seen[byte] >> bit & 1:
            self._seen[byte] |= 1 << bit
            self._values.append(value)

    def __len__(self) -> int:
        return len(self._values)

    def values(self) -> np.ndarray:
        return np.array(self._values, dtype=np.float64)


@dataclass
class ImageStats:
    """Accumulated statistics of the images of one domain (memory: ~32 bytes an image)."""

    per_image: dict[str, _Column] = field(
        default_factory=lambda: {k: _Column() for k in _PER_IMAGE}
    )
    channel_sum: np.ndarray | None = None
    channel_sumsq: np.ndarray | None = None
    pixel_count: int = 0

    def record_size(self, index: int, image: torch.Tensor) -> None:
        self.per_image["height"].add(index, float(image.shape[-2]))
        self.per_image["width"].add(index, float(image.shape[-1]))

    def record_pixels(self, index: int, image: torch.Tensor) -> None:
        self.record_pixel_batch([index], [image])

    def record_pixel_batch(self, indices: Sequence[int], images: Sequence[torch.Tensor]) -> None:
        """The pixel statistics of ``images`` (dataset items ``indices``), same-sized ones
        measured together. An index already recorded (a second epoch) adds nothing."""
        bright, contrast = self.per_image["brightness"], self.per_image["contrast"]
        fresh, first = [], set()
        for pos, index in enumerate(indices):
            if not bright.has(index) and index not in first:
                fresh.append(pos)
                first.add(index)
        if not fresh:
            return
        means, stds = [0.0] * len(fresh), [0.0] * len(fresh)
        for positions, x in same_shape_groups([images[p] for p in fresh]):
            x = x.detach()
            if x.dtype not in (torch.float32, torch.float64):
                x = x.to(torch.float64)
            flat = x.reshape(x.shape[0], x.shape[1], -1)  # (B, C, P)
            count = flat.shape[1] * flat.shape[2]
            # Sums accumulate in float64 (as if the pixels were float64 from the start).
            s = flat.sum(dim=2, dtype=torch.float64)  # (B, C)
            mean = s.sum(dim=1) / count
            # Deviations from the mean rounded to the pixels' dtype: a flat image's are
            # exactly 0. With mu that rounded mean, sum (x - m)^2 = sum (x - mu)^2 - n (m - mu)^2
            # and sum x^2 = sum (x - mu)^2 + mu (2 sum x - n mu), exactly.
            mu = mean.to(flat.dtype)
            dev = flat - mu[:, None, None]
            dd = (dev * dev).sum(dim=2, dtype=torch.float64)  # (B, C)
            mu = mu.double()
            var = (dd.sum(dim=1) / count - (mean - mu) ** 2).clamp_(min=0.0)
            for p, m, sd in zip(positions, mean.tolist(), var.sqrt_().tolist()):
                means[p], stds[p] = m, sd
            ss = dd + mu[:, None] * (2.0 * s - flat.shape[2] * mu[:, None])
            s, ss = s.sum(dim=0).numpy(), ss.sum(dim=0).numpy()
            if self.channel_sum is None:
                self.channel_sum, self.channel_sumsq = s, ss
            elif self.channel_sum.shape == s.shape:
                self.channel_sum = self.channel_sum + s
                self.channel_sumsq = self.channel_sumsq + ss
            else:  # another channel count than the first images': not pooled with them
                continue
            self.pixel_count += flat.shape[0] * flat.shape[2]
        for j, pos in enumerate(fresh):
            bright.add(indices[pos], means[j])
            contrast.add(indices[pos], stds[j])

    @property
    def n(self) -> int:
        return len(self.per_image["brightness"])

    def values(self, key: str) -> np.ndarray:
        return self.per_image[key].values()

    def channel_mean(self) -> list[float] | None:
        if self.channel_sum is None or self.pixel_count == 0:
            return None
        return (self.channel_sum / self.pixel_count).tolist()

    def channel_std(self) -> list[float] | None:
        if self.channel_sum is None or self.pixel_count == 0:
            return None
        mean = self.channel_sum / self.pixel_count
        var = np.maximum(self.channel_sumsq / self.pixel_count - mean**2, 0.0)
        return np.sqrt(var).tolist()

    def to_dict(self) -> dict:
        out: dict = {"n_images": self.n}
        for key in _PER_IMAGE:
            v = self.values(key)
            out[key] = (
                {
                    "mean": float(v.mean()),
                    "std": float(v.std()),
                    "min": float(v.min()),
                    "max": float(v.max()),
                }
                if v.size
                else None
            )
        out["channel_mean"] = self.channel_mean()
        out["channel_std"] = self.channel_std()
        return out


class RecordingDataset(Dataset):
    """Pass-through dataset that records statistics of each image it serves.

    ``what="size"`` records the native size (wrap the raw images),
    ``what="pixels"`` the pixel statistics (wrap the channel-matched images).
    """

    def __init__(self, base: Dataset, recorder: ImageStats, what: str = "pixels"):
        if what not in ("size", "pixels"):
            raise ValueError(f"The 'what' parameter must be 'size' or 'pixels'. Got {what!r}.")
        self.base, self.recorder, self.what = base, recorder, what

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        items = [item[:2] for item in fetch_items(self.base, indices)]
        images = [image for image, _ in items]
        if self.what == "size":
            for index, image in zip(indices, images):
                self.recorder.record_size(index, image)
        else:
            self.recorder.record_pixel_batch(indices, images)
        return items


def drift_table(source: ImageStats, target: ImageStats) -> list[dict]:
    """One row per statistic: source and target means and a two-sample KS test."""
    rows = []
    for key in _PER_IMAGE:
        s, t = source.values(key), target.values(key)
        row = {
            "statistic": key,
            "source_mean": float(s.mean()) if s.size else None,
            "target_mean": float(t.mean()) if t.size else None,
            "ks": None,
            "p_value": None,
        }
        if s.size >= 2 and t.size >= 2:
            if np.ptp(np.concatenate([s, t])) == 0:  # identical constants: no drift
                row["ks"], row["p_value"] = 0.0, 1.0
            else:
                res = stats.ks_2samp(s, t)
                row["ks"], row["p_value"] = float(res.statistic), float(res.pvalue)
        rows.append(row)
    return rows


def normalization_check(
    target: ImageStats,
    expected_mean: list[float] | None,
    expected_std: list[float] | None,
    expected_from: str,
    *,
    z_tolerance: float = 0.5,
    ratio_tolerance: float = 2.0,
) -> tuple[dict, list[str]]:
    """Compare the target's raw per-channel pixel moments with what the model expects.

    A channel fails when its mean is more than ``z_tolerance`` expected stds
    away from the expected mean, or its std is off by more than a factor of
    ``ratio_tolerance``. Returns the check as a dict and warning lines.
    """
    mean, std = target.channel_mean(), target.channel_std()
    check = {
        "expected_from": expected_from,
        "expected_mean": expected_mean,
        "expected_std": expected_std,
        "target_mean": mean,
        "target_std": std,
        "channels": [],
        "ok": None,
    }
    if mean is None:
        return check, ["The normalisation check was not made: no target pixel was read."]
    if expected_mean is None or expected_std is None:
        why = expected_from.removeprefix("nothing: ")
        return check, [
            f"The normalisation check was not made: {why}, so nothing says what pixels the "
            "model expects; pass normalize (--normalize MEAN,STD) or source data."
        ]
    if len(expected_mean) != len(mean):
        expected_mean = [float(np.mean(expected_mean))] * len(mean)
        expected_std = [float(np.mean(expected_std))] * len(mean)
    bad = []
    for c, (m, s, em, es) in enumerate(zip(mean, std, expected_mean, expected_std)):
        es = max(es, 1e-8)
        z = (m - em) / es
        ratio = s / es
        fine = abs(z) <= z_tolerance and (1 / ratio_tolerance) <= ratio <= ratio_tolerance
        check["channels"].append({"channel": c, "z": z, "std_ratio": ratio, "ok": fine})
        if not fine:
            bad.append((c, m, s, em, es))
    check["ok"] = not bad
    return check, ([_normalization_warning(bad, len(mean), expected_from)] if bad else [])


def _close(values: list[float], tol: float = 0.005) -> bool:
    # Within half a percent of the pixel range: a grayscale image replicated to RGB
    # (or re-encoded from one) gives such channels.
    return max(values) - min(values) <= tol


def _channels_text(channels: list[int], total: int) -> str:
    if len(channels) == 1:
        return f"channel {channels[0]}"
    listed = ", ".join(map(str, channels[:-1])) + f" and {channels[-1]}"
    return f"{'all ' if len(channels) == total else ''}channels {listed}"


def _normalization_warning(bad: list[tuple], total: int, expected_from: str) -> str:
    """One warning for every channel that does not fit, naming the channels.

    Channels with (nearly) the same target moments, as a grayscale image
    replicated to three channels has, are described once; otherwise each
    channel's numbers are listed.
    """
    channels = [b[0] for b in bad]
    means, stds, exp_means, exp_stds = ([b[k] for b in bad] for k in range(1, 5))
    where = _channels_text(channels, total)
    advice = "; check the normalisation (--normalize) and the image encoding before fine-tuning."
    if len(bad) == 1:
        return (
            f"Target pixels in {where} have mean {means[0]:.3f} and std {stds[0]:.3f}, but the "
            f"model expects mean {exp_means[0]:.3f} and std {exp_stds[0]:.3f} ({expected_from})"
            + advice
        )
    if _close(means) and _close(stds):
        exact = all(len({f"{v:.3f}" for v in vals}) == 1 for vals in (means, stds))
        if _close(exp_means, 1e-9) and _close(exp_stds, 1e-9):
            expected = f"mean {exp_means[0]:.3f} and std {exp_stds[0]:.3f}"
        else:
            expected = (
                f"means {', '.join(f'{v:.3f}' for v in exp_means)} and stds "
                f"{', '.join(f'{v:.3f}' for v in exp_stds)}"
            )
        return (
            f"Target pixels in {where} have {'the same' if exact else 'nearly the same'} mean "
            f"{float(np.mean(means)):.3f} and std {float(np.mean(stds)):.3f} (identical "
            f"channels, as grayscale images replicated to RGB give), but the model expects "
            f"{expected} ({expected_from})" + advice
        )
    listed = "; ".join(
        f"channel {c} has mean {m:.3f} and std {s:.3f} against {em:.3f} and {es:.3f}"
        for c, m, s, em, es in bad
    )
    return (
        f"Target pixels in {where} do not fit the normalisation the model expects "
        f"({expected_from}): {listed}" + advice
    )
