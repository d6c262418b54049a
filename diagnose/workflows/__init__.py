"""The workflows users run (assess, compare, audit, demo) and their shared start-up."""

from diagnose.workflows.assess_capture import capture_domains, capture_layout, memory_share
from diagnose.workflows.assessment import AssessResult, assess
from diagnose.workflows.checkpoint_audit import (
    ACCURACY_DROP_NOTABLE,
    AGREEMENT_UNCHANGED,
    CKA_UNCHANGED,
    THRESHOLDS,
    AuditResult,
    audit,
    build_finetuned,
    verdict,
)
from diagnose.workflows.compare_args import (
    check_compare_args,
    lora_settings,
    parse_strategies,
    resolve_unfreeze,
)
from diagnose.workflows.comparison import DEFAULT_HEAD_LR, CompareResult, compare
from diagnose.workflows.demo import DEMO_SOURCE, DEMO_TARGETS, run_demo
from diagnose.workflows.startup import (
    as_domain,
    as_loaded,
    forgetting_meter,
    model_and_data,
    source_eval_set,
    written,
)
from diagnose.workflows.tracking import DEFAULT_TRACK_IMAGES, ForgettingTracker

__all__ = [
    "ACCURACY_DROP_NOTABLE",
    "AGREEMENT_UNCHANGED",
    "as_domain",
    "as_loaded",
    "assess",
    "AssessResult",
    "audit",
    "AuditResult",
    "build_finetuned",
    "capture_domains",
    "capture_layout",
    "check_compare_args",
    "CKA_UNCHANGED",
    "compare",
    "CompareResult",
    "DEFAULT_HEAD_LR",
    "DEFAULT_TRACK_IMAGES",
    "DEMO_SOURCE",
    "DEMO_TARGETS",
    "forgetting_meter",
    "ForgettingCallback",
    "ForgettingTracker",
    "lora_settings",
    "memory_share",
    "model_and_data",
    "parse_strategies",
    "resolve_unfreeze",
    "run_demo",
    "source_eval_set",
    "THRESHOLDS",
    "verdict",
    "written",
]

# Imported on first use: these need an optional extra.
_LAZY = {"ForgettingCallback": "diagnose.workflows.lightning"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
