"""Transfer-learning diagnosis workflows: assess, compare, audit, track, report, demo.

The measurement primitives live in :mod:`probes`; this package loads data and
models, runs the workflows, recommends a strategy and renders reports.
"""

from diagnose.core import load_results, write_results
from diagnose.data import DEMO_DOMAINS, Domain, load_domain, preprocess
from diagnose.decide import STRATEGIES, recommend
from diagnose.measure import LRFindResult, lr_range_test
from diagnose.models import LoadedModel, find_head, load_model, random_init_copy
from diagnose.report import render_html, render_report_file
from diagnose.workflows import (
    AssessResult,
    AuditResult,
    CompareResult,
    ForgettingTracker,
    assess,
    audit,
    compare,
    run_demo,
)

__all__ = [
    "DEMO_DOMAINS",
    "STRATEGIES",
    "AssessResult",
    "AuditResult",
    "CompareResult",
    "Domain",
    "ForgettingCallback",
    "ForgettingTracker",
    "LRFindResult",
    "LoadedModel",
    "assess",
    "audit",
    "compare",
    "find_head",
    "load_domain",
    "load_model",
    "load_results",
    "lr_range_test",
    "preprocess",
    "random_init_copy",
    "recommend",
    "render_html",
    "render_report_file",
    "run_demo",
    "write_results",
]


def __getattr__(name: str):
    # The Lightning callback needs the optional extra: imported on first use only.
    if name == "ForgettingCallback":
        from diagnose.workflows import ForgettingCallback

        return ForgettingCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
