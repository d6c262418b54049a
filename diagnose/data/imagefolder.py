"""A lightweight ImageFolder reader: ``root/<class>/**/<image>``, scanned without decoding pixels.

Written instead of ``torchvision.datasets.ImageFolder`` so that every problem
(missing path, flat folder, corrupt files, stray files) is a clear message,
and so sizes and channels are known from the file headers alone.

The scan skips files that do not open or whose structure is broken, including
JPEG and GIF files that stop before their end marker (a truncated download),
which are decoded once to make sure. An image that still fails to decode later
raises :class:`UndecodableImage` from the dataset, which records its index;
the readers of ``diagnose`` leave such images out and say so in the warnings.
PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from probes import UnreadableExample

__all__ = [
    "GRAY_MODES",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ImageFolderScan",
    "UndecodableImage",
    "pil_to_tensor",
    "scan_image_folder",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
# The bytes a complete file ends with, for formats whose verify() does not read
# to the end (PNG's checks every chunk, WebP's the RIFF size).
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "GIF": b"\x3b"}
_TAIL_BYTES = 64


class UndecodableImage(UnreadableExample, ValueError):
    """An image that opened but failed to decode (a truncated JPEG, a broken data stream).

    ``index`` is its index in the dataset and ``item`` a short description for
    warnings ("cat/3.jpg (OSError: image file is truncated)"); both are None
    when the exception was re-raised from a DataLoader worker. A ValueError,
    so a reader that does not skip it still ends with one clear line.
    """

    def __init__(self, message: str, index: int | None = None, item: str | None = None):
        super().__init__(message, item)
        self.index = index


def _stops_early(path: str, fmt: str | None) -> bool:
    """True when a JPEG or GIF does not end with its end marker (trailing padding allowed)."""
    marker = _END_MARKERS.get(fmt or "")
    if marker is None:
        return False
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    return not tail.rstrip(b"\x00\r\n\t ").endswith(marker)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class ImageFolderScan:
    """What a scan found: readable files with their label and header size (H, W)."""

    root: Path
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    sizes: list[tuple[int, int]]
    all_gray: bool
    warnings: list[str] = field(default_factory=list)


def _examples(names: list[str], k: int = 3) -> str:
    shown = ", ".join(names[:k])
    return shown + (", ..." if len(names) > k else "")


def scan_image_folder(root: str | os.PathLike) -> ImageFolderScan:
    """List the class folders of ``root`` and read each image's header.

    Corrupt or unreadable images are skipped and counted in ``warnings``, as
    are files without an image extension. Raises ``ValueError`` when the
    folder is missing, empty, flat (images but no class folders) or holds
    no readable image.
    """
    import PIL.Image  # noqa: F401  (a missing Pillow is an ImportError, not unreadable files)

    root = Path(root)
    class_dirs = _class_dirs(root)
    paths: list[str] = []
    labels: list[int] = []
    sizes: list[tuple[int, int]] = []
    all_gray = True
    corrupt: list[str] = []
    ignored: list[str] = []
    empty_classes: list[str] = []
    for label, cls in enumerate(class_dirs):
        found = 0
        for path, rel in _files(root, cls):
            if not _is_image_name(path):
                ignored.append(rel)
                continue
            try:
                height, width, mode = _header(path)
            except Exception as exc:  # PIL raises many types for bad files
                corrupt.append(f"{rel} ({type(exc).__name__})")
                continue
            paths.append(path)
            labels.append(label)
            sizes.append((height, width))
            all_gray = all_gray and mode in GRAY_MODES
            found += 1
        if found == 0:
            empty_classes.append(cls)
    if not paths:
        raise ValueError(
            f"dataset directory '{root}' has class folders but no readable image "
            f"({len(corrupt)} unreadable, {len(ignored)} non-image files); "
            f"supported extensions: {' '.join(IMAGE_EXTENSIONS)}."
        )
    return ImageFolderScan(
        root=root,
        classes=class_dirs,
        paths=paths,
        labels=np.asarray(labels, dtype=np.int64),
        sizes=sizes,
        all_gray=all_gray,
        warnings=_scan_warnings(corrupt, ignored, empty_classes),
    )


def _class_dirs(root: Path) -> list[str]:
    """The class folders of ``root``, sorted; a missing, flat or empty root is said."""
    if not root.exists():
        raise ValueError(
            f"dataset path '{root}' does not exist: pass an ImageFolder directory "
            "(root/<class>/<image>), a demo: domain or module.path:function."
        )
    if not root.is_dir():
        raise ValueError(
            f"dataset path '{root}' is a file, not a directory: pass the ImageFolder root "
            "that holds one sub-folder per class."
        )
    entries = sorted(os.listdir(root))
    class_dirs = [e for e in entries if not e.startswith(".") and (root / e).is_dir()]
    if class_dirs:
        return class_dirs
    if any(_is_image_name(e) for e in entries):
        raise ValueError(
            f"dataset directory '{root}' holds images but no class sub-folders: "
            f"move them into {root}/<class name>/ (one folder per class)."
        )
    raise ValueError(
        f"dataset directory '{root}' is empty: it needs one sub-folder per class "
        "with the images inside (root/<class>/<image>)."
    )


def _files(root: Path, cls: str):
    """``(path, path relative to root)`` of every visible file under ``root/cls``, sorted."""
    for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                path = os.path.join(dirpath, name)
                yield path, os.path.relpath(path, root)


def _header(path: str) -> tuple[int, int, str]:
    """``(height, width, mode)`` of an image file, after checking it is not corrupt."""
    from PIL import Image

    # open() reads only the header; verify() checks the file's structure (PNG CRCs)
    # without decoding the pixels.
    with Image.open(path) as img:
        width, height = img.size
        mode, fmt = img.mode, img.format
        img.verify()
    if _stops_early(path, fmt):
        # Data after the end marker is legal, truncation is not: only a decode tells them apart.
        with Image.open(path) as img:
            img.load()
    return int(height), int(width), mode


def _scan_warnings(corrupt: list[str], ignored: list[str], empty_classes: list[str]) -> list[str]:
    warnings: list[str] = []
    if corrupt:
        warnings.append(f"skipped {len(corrupt)} unreadable image file(s): {_examples(corrupt)}")
    if ignored:
        warnings.append(
            f"ignored {len(ignored)} file(s) without an image extension: {_examples(ignored)}"
        )
    if empty_classes:
        warnings.append(
            f"{len(empty_classes)} class folder(s) hold no readable image: "
            f"{_examples(empty_classes)}"
        )
    return warnings


def pil_to_tensor(img, channels: int) -> torch.Tensor:
    """A PIL image as a float32 (C, H, W) tensor in [0, 1] with ``channels`` 1 or 3.

    RGBA loses its alpha channel (no compositing); palette and grayscale
    images are converted; 16-bit and float grayscale are scaled to [0, 1].
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0
        arr = np.clip(arr, 0.0, 1.0)[None]
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.expand(3, -1, -1).clone() if channels == 3 else t
    if img.mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)[None]
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.expand(3, -1, -1).clone() if channels == 3 else t
    if img.mode == "P":
        # Palette images may carry transparency; go through RGBA so it is dropped cleanly.
        img = img.convert("RGBA")
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.array(img, dtype=np.uint8)  # a writable copy for torch
    if arr.ndim == 2:
        arr = arr[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    return t.to(torch.float32) / 255.0


class ImageFolderDataset(Dataset):
    """Item ``i`` is ``(float32 tensor C x H x W in [0, 1] at native size, label)``.

    An image that fails to decode raises :class:`UndecodableImage` and is
    recorded in ``undecodable`` (index -> short description; this process
    only: what DataLoader workers meet stays in the workers).
    """

    def __init__(self, scan: ImageFolderScan, channels: int):
        self.root = scan.root
        self.paths = scan.paths
        self.targets = scan.labels
        self.classes = scan.classes
        self.channels = channels
        self.undecodable: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as img:
                img.load()
                x = pil_to_tensor(img, self.channels)
        except Exception as exc:  # PIL raises many types for bad data
            # The scan does not decode pixels, so a file can still fail here.
            why = f"{type(exc).__name__}: {exc}"
            item = f"{os.path.relpath(path, self.root)} ({why})"
            self.undecodable[int(index)] = item
            raise UndecodableImage(
                f"image '{path}' could not be decoded ({why}); remove or replace the file.",
                index=int(index),
                item=item,
            ) from exc
        return x, int(self.targets[index])
