"""Choosing and applying the preprocessing a model expects.

The choice is explicit and recorded: an ``image_size`` and ``normalize`` given
by the user win; otherwise a model with declared preprocessing (torchvision
weights, the demo model) gets its own, and any other model gets the images'
native size scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch.utils.data import Dataset, Subset

from diagnose.data.domains import Domain, preprocess
from diagnose.data.imagestats import ImageStats, RecordingDataset

__all__ = [
    "Preprocessing",
    "parse_normalize",
    "prepared_dataset",
    "upscale_warnings",
]


@dataclass
class Preprocessing:
    image_size: tuple[int, int]
    channels: int
    mean: list[float] | None
    std: list[float] | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "image_size": list(self.image_size),
            "channels": self.channels,
            "normalize": None if self.mean is None else {"mean": self.mean, "std": self.std},
            "notes": self.notes,
        }


def parse_normalize(value: str | Sequence | None) -> tuple[list[float], list[float]] | str | None:
    """Parse ``--normalize``: ``none``, or ``MEAN,STD`` / ``m1,m2,m3,s1,s2,s3``.

    Returns None (not given), the string "none", or (mean, std) lists.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == "none":
            return "none"
        try:
            numbers = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"'normalize' must be 'none' or comma-separated numbers MEAN,STD (one pair or one "
                f"per channel). Got {value!r}."
            ) from None
    else:
        mean, std = value
        numbers = [*mean, *std]
    if len(numbers) < 2 or len(numbers) % 2:
        raise ValueError(
            f"'normalize' needs a mean and a std, either one pair or one per channel "
            f"(e.g. 0.5,0.25 or 0.485,0.456,0.406,0.229,0.224,0.225). Got {len(numbers)} numbers."
        )
    half = len(numbers) // 2
    mean, std = numbers[:half], numbers[half:]
    if any(s <= 0 for s in std):
        raise ValueError(f"'normalize' std values must be positive. Got {std}.")
    return mean, std


def prepared_dataset(domain: Domain, indices, prep: Preprocessing, recorder: ImageStats) -> Dataset:
    """The domain's images (at ``indices``) as the model will see them, recording statistics."""
    raw = RecordingDataset(Subset(domain.dataset, list(map(int, indices))), recorder, what="size")
    matched = preprocess(raw, image_size=prep.image_size, channels=prep.channels)
    recorded = RecordingDataset(matched, recorder)
    if prep.mean is None:
        return recorded
    return preprocess(recorded, mean=prep.mean, std=prep.std)


_MAX_UPSCALE = 4  # beyond this a resized image is mostly interpolation, not content


def upscale_warnings(domains: list[Domain], size: tuple[int, int]) -> list[str]:
    """A warning per domain whose smallest images are blown up more than ``_MAX_UPSCALE`` times.

    Not an error: a tiny image is still valid input, but features of a
    2x2 image stretched to 32x32 say little about the data.
    """
    out = []
    for d in domains:
        (h, w), _ = d.size_range
        if min(size[0] / h, size[1] / w) > _MAX_UPSCALE:
            out.append(
                f"{d.name}: its smallest images are {h}x{w} pixels, upscaled more than "
                f"{_MAX_UPSCALE}x to {size[0]}x{size[1]}: measurements on such images mean "
                "little; check the data or use a model made for small inputs."
            )
    return out
