"""The input a model expects: image size, channels and normalisation, resolved once.

``--image-size`` and ``--normalize`` win; otherwise the model's own declared
size and mean/std (torchvision and timm weights declare them), else the
images' native size scaled to [0, 1]. Channels follow the model's first layer.
The model decides its input, so :mod:`diagnose.data` never imports models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from diagnose.core import Arg, UsageError
from diagnose.data import Domain, Preprocessing, parse_normalize
from diagnose.models.loaded import LoadedModel

__all__ = [
    "expected_size_hint",
    "resolve_preprocessing",
]


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
            raise UsageError(
                Arg("image_size"), f" must be a positive number of pixels. Got {image_size}."
            )
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
            raise UsageError(
                "the images do not share one size and the model declares no input size; pass ",
                Arg("image_size", "N"), ".",
            )  # fmt: skip
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
        raise UsageError(
            Arg("normalize"),
            f" gives {len(mean)} channel means but the model takes {channels} channels.",
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


def expected_size_hint(model: nn.Module, channels: int) -> tuple[str | Arg, ...]:
    """What input a model with a Linear on flattened pixels expects, when it can be told:
    the parts of a :class:`~diagnose.core.UsageError`."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Linear) and first.in_features % channels == 0:
        side = math.isqrt(first.in_features // channels)
        if side * side * channels == first.in_features:
            return (
                f"its first layer takes {first.in_features} features, i.e. {channels}x{side}x{side} "
                "images: pass ",
                Arg("image_size", str(side)),
            )
    return "pass ", Arg("image_size", "N"), " with the size the model was built for"
