"""Choosing and applying the preprocessing a model expects.

The choice is explicit and recorded: an ``image_size`` and ``normalize`` given
by the user win; otherwise a model with declared preprocessing (torchvision
weights, the demo model) gets its own, and any other model gets the images'
native size scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from diagnose.core import Arg, UsageError
from diagnose.data.batches import same_shape_groups
from diagnose.data.domains import Domain
from diagnose.data.imagestats import ImageStats, RecordingDataset
from probes import fetch_items

__all__ = [
    "Preprocessing",
    "parse_normalize",
    "prepared_dataset",
    "preprocess",
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
            raise UsageError(
                Arg("normalize"),
                " must be 'none' or comma-separated numbers MEAN,STD (one pair "
                f"or one per channel). Got {value!r}.",
            ) from None
    else:
        mean, std = value
        numbers = [*mean, *std]
    if len(numbers) < 2 or len(numbers) % 2:
        raise UsageError(
            Arg("normalize"),
            " needs a mean and a std, either one pair or one per channel "
            f"(e.g. 0.5,0.25 or 0.485,0.456,0.406,0.229,0.224,0.225). Got {len(numbers)} numbers.",
        )
    half = len(numbers) // 2
    mean, std = numbers[:half], numbers[half:]
    if any(s <= 0 for s in std):
        raise UsageError(Arg("normalize"), f" std values must be positive. Got {std}.")
    return mean, std


def prepared_dataset(domain: Domain, indices, prep: Preprocessing, recorder: ImageStats) -> Dataset:
    """The domain's images (at ``indices``) as the model will see them, recording statistics."""
    raw = RecordingDataset(Subset(domain.dataset, list(map(int, indices))), recorder, what="size")
    matched = preprocess(raw, image_size=prep.image_size, channels=prep.channels)
    recorded = RecordingDataset(matched, recorder)
    if prep.mean is None:
        return recorded
    return preprocess(recorded, mean=prep.mean, std=prep.std)


def preprocess(
    dataset: Dataset | Domain,
    *,
    image_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int | None = None,
) -> Dataset:
    """Wrap a dataset of ``(image, label)`` so images match what a model expects.

    In order: channel conversion (1 -> 3 replicates, 3 -> 1 averages, RGBA
    drops alpha), bilinear antialiased resize to ``image_size`` (an int means
    square), then ``(x - mean) / std`` per channel. Labels pass through.

    Example:
        >>> ds = preprocess(load_domain("demo:digits").dataset, image_size=64,
        ...                 channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
        >>> ds[0][0].shape
        torch.Size([3, 64, 64])
    """
    base = dataset.dataset if isinstance(dataset, Domain) else dataset
    if channels is not None and channels not in (1, 3):
        raise ValueError(
            f"The 'channels' parameter of preprocess must be 1 or 3. Got {channels!r} instead."
        )
    size: tuple[int, int] | None = None
    if image_size is not None:
        size = (
            (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(image_size)
        )
        if len(size) != 2 or min(size) < 1:
            raise ValueError(
                f"The 'image_size' parameter of preprocess must be a positive int or (H, W). "
                f"Got {image_size!r} instead."
            )
    if (mean is None) != (std is None):
        raise ValueError("preprocess: pass both mean and std, or neither.")
    mean_t = std_t = None
    if mean is not None:
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        if mean_t.shape[0] != std_t.shape[0]:
            raise ValueError(
                f"preprocess: mean has {mean_t.shape[0]} values and std {std_t.shape[0]}; "
                "they need one value per channel."
            )
        if channels is not None and mean_t.shape[0] != channels:
            raise ValueError(
                f"preprocess: mean/std have {mean_t.shape[0]} values for {channels} channels."
            )
        if bool((std_t <= 0).any()):
            raise ValueError(f"preprocess: std must be positive, got {list(std)}.")
    return _Preprocessed(base, size, mean_t, std_t, channels)


class _Preprocessed(Dataset):
    """What :func:`preprocess` returns; a batch of same-sized images is matched in one go."""

    def __init__(self, base, image_size, mean, std, channels):
        self.base = base
        self.image_size = image_size
        self.channels = channels
        self.mean = mean
        self.std = std
        self.targets = getattr(base, "targets", None)
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        items = fetch_items(self.base, indices)
        images = [x for x, _ in items]
        for positions, x in same_shape_groups(images):
            for p, image in zip(positions, self._match(x).unbind(0)):
                images[p] = image
        return [(image, y) for image, (_, y) in zip(images, items)]

    def _match(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, C, H, W) batch of same-sized images, converted, resized and normalised."""
        c = x.shape[1]
        if c == 4:  # RGBA: alpha carries no appearance for a classifier
            x, c = x[:, :3], 3
        replicate = c == 1 and self.channels == 3
        if self.channels is not None and c != self.channels and not replicate:
            if not (c == 3 and self.channels == 1):
                raise ValueError(
                    f"preprocess: cannot convert {c}-channel images to {self.channels} channels."
                )
            x = x.mean(dim=1, keepdim=True)
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(
                x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False
            )
        if replicate:
            # After the resize: each channel is resized on its own, so resizing the one
            # channel and replicating it gives the same values for a third of the work.
            x = x.expand(-1, 3, -1, -1)
        if self.mean is None:
            return x.contiguous() if replicate else x
        if self.mean.shape[0] != x.shape[1]:
            raise ValueError(
                f"preprocess: mean/std have {self.mean.shape[0]} values but the images have "
                f"{x.shape[1]} channels: pass channels={self.mean.shape[0]} or matching mean/std."
            )
        return (x - self.mean) / self.std


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
