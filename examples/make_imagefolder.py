"""Write demo digits as ImageFolder directories (``root/<class>/<n>.png``).

Stands in for your own data: ``diagnose`` reads any folder laid out this way.

    python examples/make_imagefolder.py data/ --per-class 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from diagnose.data import load_domain


def write_imagefolder(spec: str, root: str | Path, per_class: int = 20, rgb: bool = True) -> Path:
    """Write up to ``per_class`` images of each class of a data spec under ``root``."""
    domain = load_domain(spec)
    root = Path(root)
    counts: dict[int, int] = {}
    for i in range(len(domain.dataset)):
        label = int(domain.labels[i])
        if counts.get(label, 0) >= per_class:
            continue
        image, _ = domain.dataset[i]
        arr = (image.clamp(0, 1)[0].numpy() * 255).round().astype(np.uint8)
        pil = Image.fromarray(arr, mode="L")
        if rgb:
            pil = pil.convert("RGB")
        folder = root / domain.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        pil.save(folder / f"{counts.get(label, 0):04d}.png")
        counts[label] = counts.get(label, 0) + 1
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output folder; source/ and target/ are created inside")
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    write_imagefolder("demo:digits", Path(args.root) / "source", args.per_class)
    write_imagefolder("demo:digits-noise", Path(args.root) / "target", args.per_class)
    print(Path(args.root).resolve())


if __name__ == "__main__":
    main()
