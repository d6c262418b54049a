"""Where cached artefacts (the pretrained demo model) live, and atomic writes there."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "resolve_cache_dir",
]

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
