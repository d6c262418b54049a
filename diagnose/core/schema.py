"""results.json: the single source of every report.

Numbers are plain JSON numbers; a non-finite value becomes ``null`` and a
warning. Files are written atomically (a temporary file in the same folder,
then ``os.replace``) so a crash never leaves a truncated results file.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from diagnose.core.files import atomic_write_text
from diagnose.core.record import as_number
from diagnose.core.threads import thread_summary

__all__ = [
    "RunResult",
    "SCHEMA_VERSION",
    "environment",
    "finite",
    "jsonable",
    "load_results",
    "section",
    "write_results",
]

SCHEMA_VERSION = "1.0"


def finite(value: Any) -> float | None:
    """A results value as a finite float, or None (missing, text, bool, NaN or inf).

    For reading results.json, where any number may be null: ``finite(0.5) == 0.5``,
    ``finite(True) is None``, ``finite("0.5") is None``.
    """
    number = as_number(value)
    return None if number is None else float(number)


def section(entry: dict, key: str) -> dict:
    """``entry[key]`` when it is a dict, else ``{}``: a sub-section that may be absent or null."""
    value = entry.get(key)
    return value if isinstance(value, dict) else {}


@dataclass
class RunResult:
    """What a workflow returns: ``to_dict()`` is results.json; paths are set when written."""

    results: dict
    results_path: Path | None = None
    report_path: Path | None = None

    def to_dict(self) -> dict:
        return self.results

    @classmethod
    def of(cls, results: dict, out_dir: Path | None):
        """The result of ``results``, with its paths when they were written to ``out_dir``."""
        if out_dir is None:
            return cls(results)
        return cls(results, out_dir / "results.json", out_dir / "report.html")


_REQUIRED_KEYS = {"schema", "kind"}


def jsonable(obj: Any, warnings: list[str] | None = None, path: str = "") -> Any:
    """Convert ``obj`` to plain JSON types; non-finite floats become None.

    Each replaced non-finite number is reported in ``warnings`` (when given)
    with the key path where it was found.
    """
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {
            str(k): jsonable(v, warnings, f"{path}.{k}" if path else str(k)) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, warnings, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist(), warnings, path)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not math.isfinite(value):
            if warnings is not None:
                warnings.append(f"{path} was {value} and is reported as null.")
            return None
        return value
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def write_results(results: dict, path: str | os.PathLike) -> Path:
    """Write a results dict as JSON atomically; non-finite numbers become null."""
    warnings = results.setdefault("warnings", [])
    clean = jsonable(results, warnings)
    clean["warnings"] = list(dict.fromkeys(warnings))  # jsonable appended to the same list
    return atomic_write_text(path, json.dumps(clean, indent=2, allow_nan=False) + "\n")


def load_results(path: str | os.PathLike) -> dict:
    """Read a results JSON written by any ``diagnose`` command and check its schema."""
    path = Path(path)
    if not path.exists():
        raise ValueError(
            f"results file {path} does not exist; pass the results.json a command wrote."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"results file {path} is not valid JSON ({exc.msg} at line {exc.lineno})."
        ) from None
    if not isinstance(data, dict) or not _REQUIRED_KEYS <= set(data):
        raise ValueError(
            f"results file {path} is not a diagnose results file (missing 'schema' or 'kind')."
        )
    major = str(data["schema"]).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise ValueError(
            f"results file {path} has schema {data['schema']}, this version reads "
            f"{SCHEMA_VERSION}; upgrade transfer-diagnose to render it."
        )
    return data


def environment(device: str, seed: int) -> dict:
    """Library versions, device and seed: what a reviewer needs to reproduce a run."""
    import jinja2
    import scipy
    import sklearn
    import torch
    import torchvision

    try:
        from importlib.metadata import version

        ours = version("transfer-diagnose")
    except Exception:  # not installed (running from a checkout)
        ours = "unknown"
    return {
        "transfer_diagnose": ours,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit_learn": sklearn.__version__,
        "jinja2": jinja2.__version__,
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "threads": thread_summary(),
        "seed": seed,
    }
