"""Where cached artefacts (the pretrained demo model) live, and atomic writes there."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from diagnose.results import atomic_write_bytes

__all__ = ["atomic_torch_save", "resolve_cache_dir"]

_APP = "transfer-diagnose"


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: ``cache_dir``, else ``$DIAGNOSE_CACHE_DIR``, else the user cache.

    The user cache is ``$XDG_CACHE_HOME/transfer-diagnose`` or
    ``~/.cache/transfer-diagnose``. The directory is not created here.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DIAGNOSE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / _APP


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to memory, then :func:`diagnose.results.atomic_write_bytes`.

    A reader never sees a half-written file, and two processes writing the
    same path at once each leave a complete file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
