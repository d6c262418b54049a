"""Choosing and applying the preprocessing a model expects.

The choice is explicit and recorded: an ``image_size`` and ``normalize`` given
by the user win; otherwise a model with declared preprocessing (torchvision
weights, the demo model) gets its own, and any other model gets the images'
native size scaled to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from diagnose.data import Domain, preprocess
from diagnose.imagestats import ImageStats, RecordingDataset
from diagnose.models import LoadedModel

__all__ = [
    "Preprocessing",
    "expected_size_hint",
    "parse_normalize",
    "prepared_dataset",
    "resolve_device",
    "resolve_preprocessing",
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
                f"--normalize must be 'none' or comma-separated numbers MEAN,STD (one pair or one "
                f"per channel). Got {value!r}."
            ) from None
    else:
        mean, std = value
        numbers = [*mean, *std]
    if len(numbers) < 2 or len(numbers) % 2:
        raise ValueError(
            f"--normalize needs a mean and a std, either one pair or one per channel "
            f"(e.g. 0.5,0.25 or 0.485,0.456,0.406,0.229,0.224,0.225). Got {len(numbers)} numbers."
        )
    half = len(numbers) // 2
    mean, std = numbers[:half], numbers[half:]
    if any(s <= 0 for s in std):
        raise ValueError(f"--normalize std values must be positive. Got {std}.")
    return mean, std


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = str(device)
    if not (dev == "cpu" or dev.startswith("cuda")):
        raise ValueError(f"--device must be one of auto, cpu, cuda[:N]. Got {dev!r}.")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was requested but no CUDA GPU is available; use --device cpu."
        )
    return torch.device(dev)


def resolve_preprocessing(
    loaded: LoadedModel,
    domains: list[Domain],
    image_size: int | None,
    normalize: str | Sequence | None,
) -> Preprocessing:
    notes: list[str] = []
    channels = loaded.input_channels
    if image_size is not None:
        if int(image_size) < 1:
            raise ValueError(f"--image-size must be a positive number of pixels. Got {image_size}.")
        size = (int(image_size), int(image_size))
        notes.append(f"Images resized to {size[0]}x{size[1]} (--image-size).")
    elif loaded.input_size is not None:
        size = (loaded.input_size, loaded.input_size)
        notes.append(f"Images resized to {size[0]}x{size[1]}, the size the model expects.")
    else:
        natives = {d.native_size for d in domains}
        if len(natives) == 1 and None not in natives:
            size = natives.pop()
            notes.append(
                f"Images kept at their native size {size[0]}x{size[1]} (the model declares no "
                "input size; pass --image-size to change it)."
            )
        else:
            raise ValueError(
                "the images do not share one size and the model declares no input size; "
                "pass --image-size N."
            )
    parsed = parse_normalize(normalize)
    if parsed == "none":
        mean = std = None
        notes.append("No normalisation: pixels scaled to [0, 1] (--normalize none).")
    elif parsed is not None:
        mean, std = parsed
        notes.append(f"Normalised with mean {mean} and std {std} (--normalize).")
    elif loaded.mean is not None and loaded.std is not None:
        mean, std = list(loaded.mean), list(loaded.std)
        notes.append(f"Normalised with the model's own mean {mean} and std {std}.")
    else:
        mean = std = None
        notes.append(
            "Pixels scaled to [0, 1] with no normalisation: the model declares none "
            "(pass --normalize MEAN,STD if it was trained with one)."
        )
    if mean is not None and len(mean) not in (1, channels):
        raise ValueError(
            f"--normalize gives {len(mean)} channel means but the model takes {channels} channels."
        )
    if mean is not None and len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    for d in domains:
        if d.channels != channels:
            how = "replicated to RGB" if channels == 3 else "averaged to one channel"
            notes.append(
                f"{d.name}: {d.channels}-channel images {how} for a model that takes {channels}."
            )
    return Preprocessing(size, channels, mean, std, notes)


def prepared_dataset(domain: Domain, indices, prep: Preprocessing, recorder: ImageStats) -> Dataset:
    """The domain's images (at ``indices``) as the model will see them, recording statistics."""
    raw = RecordingDataset(Subset(domain.dataset, list(map(int, indices))), recorder, what="size")
    matched = preprocess(raw, image_size=prep.image_size, channels=prep.channels)
    recorded = RecordingDataset(matched, recorder)
    if prep.mean is None:
        return recorded
    return preprocess(recorded, mean=prep.mean, std=prep.std)


def expected_size_hint(model: nn.Module, channels: int) -> str:
    """What input a model with a Linear on flattened pixels expects, when it can be told."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Linear) and first.in_features % channels == 0:
        side = math.isqrt(first.in_features // channels)
        if side * side * channels == first.in_features:
            return (
                f"its first layer takes {first.in_features} features, i.e. {channels}x{side}x{side} "
                f"images: pass --image-size {side}"
            )
    return "pass --image-size N with the size the model was built for"


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
