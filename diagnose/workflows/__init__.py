"""The workflows users run (assess, compare, audit, demo) and their shared start-up."""

from diagnose.workflows.assessment import AssessResult, assess
from diagnose.workflows.checkpoint_audit import (
    ACCURACY_DROP_NOTABLE,
    AGREEMENT_UNCHANGED,
    CKA_UNCHANGED,
    AuditResult,
    audit,
    build_finetuned,
    verdict,
)
from diagnose.workflows.comparison import DEFAULT_HEAD_LR, CompareResult, compare, parse_strategies
from diagnose.workflows.demo import DEMO_SOURCE, DEMO_TARGETS, run_demo
from diagnose.workflows.startup import as_domain, as_loaded, source_eval_set

__all__ = [
    "ACCURACY_DROP_NOTABLE",
    "AGREEMENT_UNCHANGED",
    "AssessResult",
    "AuditResult",
    "CKA_UNCHANGED",
    "CompareResult",
    "DEFAULT_HEAD_LR",
    "DEMO_SOURCE",
    "DEMO_TARGETS",
    "as_domain",
    "as_loaded",
    "assess",
    "audit",
    "build_finetuned",
    "compare",
    "parse_strategies",
    "run_demo",
    "source_eval_set",
    "verdict",
]
