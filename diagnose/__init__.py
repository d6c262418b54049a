"""Transfer-learning diagnosis workflows: assess, report, demo.

The measurement primitives live in :mod:`probes`; this package loads data and
models, runs the workflows, recommends a strategy and renders reports.
"""

from diagnose.assess import AssessResult, assess
from diagnose.audit import AuditResult, audit
from diagnose.compare import CompareResult, compare
from diagnose.data import DEMO_DOMAINS, Domain, load_domain, preprocess
from diagnose.demo import run_demo
from diagnose.lr_find import LRFindResult, lr_range_test
from diagnose.models import LoadedModel, find_head, load_model, random_init_copy
from diagnose.recommend import STRATEGIES, recommend
from diagnose.report import render_html, render_report_file
from diagnose.results import load_results, write_results

__all__ = [
    "DEMO_DOMAINS",
    "STRATEGIES",
    "AssessResult",
    "AuditResult",
    "CompareResult",
    "Domain",
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
