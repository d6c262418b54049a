"""Memory sizes from user text: ``parse_size("2GB")`` (the ``--max-memory`` budget)."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

__all__ = ["parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value: Any, name: str = "max_memory") -> int:
    """A memory size in bytes from an int or a string such as ``"2GB"`` or ``"512MiB"``.

    Units (case-insensitive): none or ``B`` = bytes; ``KB``/``MB``/``GB``/``TB``
    are decimal (10^3 steps); ``KiB``/``MiB``/``GiB``/``TiB`` and the bare
    letters ``K``/``M``/``G``/``T`` are binary (2^10 steps, as in ``java -Xmx``
    or ``docker --memory``). Fractions are allowed (``"1.5GB"``); the result is
    rounded down to whole bytes and must be at least 1.

    Example:
        >>> parse_size("2GB"), parse_size("1.5 KiB"), parse_size(4096)
        (2000000000, 1536, 4096)
    """
    example = "e.g. 2GB, 512MiB or 1000000"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        size = int(value)
    elif isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"The '{name}' parameter must be a size in bytes with an optional unit "
                f"(B, KB, MB, GB, KiB, MiB, GiB, K, M, G), {example}. Got {value!r} instead."
            )
        size = math.floor(float(match.group(1)) * _UNITS[unit])
    else:
        raise ValueError(
            f"The '{name}' parameter must be an int (bytes) or a size string, {example}. "
            f"Got {value!r} instead."
        )
    if size < 1:
        raise ValueError(f"The '{name}' parameter must be at least 1 byte. Got {value!r} instead.")
    return size
