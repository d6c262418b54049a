"""The small shared layer every stage may use: atomic file writes, the results schema, devices, display names and spec parsing. It imports nothing else of diagnose."""

from diagnose.core.device import (
    autocast_context,
    autocast_dtype,
    configure_backends,
    describe,
    is_cuda,
    loader_kwargs,
    memory_format,
    resolve_device,
    to_device,
)
from diagnose.core.files import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    current_umask,
)
from diagnose.core.names import STRATEGY_LABELS, STRATEGY_NAMES, join_labels, strategy_label
from diagnose.core.schema import (
    SCHEMA_VERSION,
    RunResult,
    environment,
    finite,
    jsonable,
    load_results,
    section,
    write_results,
)
from diagnose.core.specs import call_spec, is_callable_spec

__all__ = [
    "RunResult",
    "SCHEMA_VERSION",
    "STRATEGY_LABELS",
    "STRATEGY_NAMES",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "autocast_context",
    "autocast_dtype",
    "call_spec",
    "configure_backends",
    "current_umask",
    "describe",
    "environment",
    "finite",
    "is_callable_spec",
    "is_cuda",
    "join_labels",
    "jsonable",
    "load_results",
    "loader_kwargs",
    "memory_format",
    "resolve_device",
    "section",
    "strategy_label",
    "to_device",
    "write_results",
]
