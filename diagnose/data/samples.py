"""Small sample thumbnails embedded in results.json, so the report needs nothing else."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

from probes import UnreadableExample

__all__ = [
    "sample_thumbnails",
]

_SPARE_TRIES = 8  # other images tried per class when picked ones fail to decode


def _png_base64(image: torch.Tensor, max_side: int) -> str:
    x = image.detach().float().clamp(0, 1)
    if x.shape[0] == 1:
        x = x[0]
        mode = "L"
    else:
        x = x[:3].permute(1, 2, 0)
        mode = "RGB"
    arr = (x.numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(arr, mode=mode)
    scale = max_side / max(pil.size)
    if scale < 1 or max(pil.size) < 48:  # upscale tiny images so they are visible
        new = (max(1, round(pil.size[0] * scale)), max(1, round(pil.size[1] * scale)))
        pil = pil.resize(new, Image.NEAREST if scale > 1 else Image.BILINEAR)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _readable(domain, c, i: int, tried: set, spares: dict, rng) -> torch.Tensor | None:
    """Image ``i``, or, when it fails to decode, another untried image of class ``c``."""
    candidates = None
    while True:
        try:
            return domain.dataset[int(i)][0]
        except UnreadableExample:
            if candidates is None:  # drawn only when needed: runs without bad files are unchanged
                pool = (
                    np.arange(len(domain.dataset))
                    if c is None
                    else np.flatnonzero(domain.labels == c)
                )
                left = spares.setdefault(c, _SPARE_TRIES)
                candidates = [int(j) for j in rng.permutation(pool) if int(j) not in tried][:left]
            if not candidates:
                return None
            i = candidates.pop(0)
            tried.add(i)
            spares[c] -= 1


def sample_thumbnails(
    domains: dict, *, seed: int = 0, per_class: int = 2, max_classes: int = 10, max_side: int = 64
) -> dict:
    """Up to ``per_class`` images of each of the first ``max_classes`` classes per domain.

    Returns {domain key: [{"label": class name, "png": base64 PNG}]}. A picked
    image that fails to decode is replaced by another of its class (up to
    ``_SPARE_TRIES`` tries a class); a domain whose images cannot be read at
    all gets one entry with an ``error``.
    """
    out: dict = {}
    rng = np.random.default_rng(seed)
    for key, domain in domains.items():
        if domain is None:
            continue
        items = []
        try:
            labels = domain.labels
            if labels is None:
                picks = [
                    (None, i)
                    for i in rng.choice(
                        len(domain.dataset), size=min(8, len(domain.dataset)), replace=False
                    )
                ]
            else:
                picks = []
                for c in np.unique(labels[labels >= 0])[:max_classes]:
                    idx = np.flatnonzero(labels == c)
                    for i in rng.choice(idx, size=min(per_class, len(idx)), replace=False):
                        picks.append((int(c), int(i)))
            tried = {i for _, i in picks}
            spares: dict = {}
            for c, i in picks:
                image = _readable(domain, c, i, tried, spares, rng)
                if image is None:
                    continue
                name = None if c is None else (domain.classes[c] if domain.classes else str(c))
                items.append({"label": name, "png": _png_base64(image, max_side)})
        except (OSError, ValueError, IndexError) as exc:
            items = [{"label": None, "png": None, "error": str(exc)}]
        out[key] = items
    return out
