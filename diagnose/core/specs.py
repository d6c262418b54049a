"""Resolving ``module.path:function`` specs shared by data and model loading."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

__all__ = [
    "call_spec",
    "is_callable_spec",
]

# A dotted Python module path, a colon, an identifier. A Windows drive path
# ("C:\\data") does not match because of the backslash.
_CALLABLE_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def is_callable_spec(spec: str) -> bool:
    """Whether ``spec`` has the form ``module.path:function``."""
    return bool(_CALLABLE_SPEC.match(spec))


def call_spec(spec: str, what: str, label: str) -> Any:
    """Import ``module.path`` (from ``sys.path`` or the current directory) and call ``function()``.

    ``what`` names the kind of object the function should return (for
    messages), ``label`` names the spec (``"dataset spec"``). Every
    failure is a one-line ``ValueError`` naming the spec and the fix.
    """
    module_name, func_name = spec.split(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    # Users expect a module next to them to be importable, as `python -m` would.
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"{label} {spec!r}: could not import module {module_name!r} ({exc}); "
            f"make sure it is on sys.path or in the current directory ({cwd})."
        ) from exc
    except Exception as exc:
        raise ValueError(
            f"{label} {spec!r}: importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    func = getattr(module, func_name, None)
    if func is None:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ValueError(
            f"{label} {spec!r}: module {module_name!r} has no function {func_name!r} "
            f"(it defines: {', '.join(public[:12]) or 'nothing public'})."
        )
    if not callable(func):
        raise ValueError(
            f"{label} {spec!r}: {module_name}.{func_name} is a {type(func).__name__}, "
            f"not a function returning {what}."
        )
    try:
        return func()
    except Exception as exc:
        raise ValueError(
            f"{label} {spec!r}: calling {module_name}.{func_name}() raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
