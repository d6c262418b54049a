"""The ``diagnose`` command line.

Exit codes: 0 success, 1 an unexpected internal error, 2 bad input (a one-line
message on stderr, no traceback unless ``--debug``), 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from diagnose.cli_parser import build_parser
from diagnose.core import Selection, UsageError
from diagnose.core.interrupts import stop_on_signals
from diagnose.core.threads import set_threads

__all__ = ["main"]


def _info(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _shared_kwargs(args) -> dict:
    """The keyword arguments assess and compare take from the shared CLI options."""
    names = (
        "weights",
        "trust_checkpoint",
        "head",
        "layers",
        "image_size",
        "normalize",
        "device",
        "seed",
        "batch_size",
        "max_samples",
        "out",
        "pool",
    )
    return {**{n: getattr(args, n) for n in names}, "progress": not args.quiet}


def _run(args) -> int:
    """Run the subcommand ``args.command``; its report's path goes to stdout."""
    commands = {
        "assess": _assess,
        "compare": _compare,
        "audit": _audit,
        "report": _report,
        "demo": _demo,
    }
    print(commands[args.command](args))
    return 0


def _assess(args) -> Path:
    if args.target is None and args.source is None:
        raise ValueError("assess needs --target DATA (and ideally --source DATA).")
    from diagnose.workflows import assess

    res = assess(
        args.model,
        args.source,
        args.target,
        **_shared_kwargs(args),
        max_memory=args.max_memory,
        max_forgetting=args.max_forgetting,
        trial_budget=args.trial_budget,
        executor=args.executor,
        ray_address=args.ray_address,
    )
    rec = res.recommendation
    how = "measured by the trial race" if rec.measured else "rules only, unmeasured"
    _info(args, f"recommended strategy: {rec.strategy} ({how}; confidence {rec.confidence})")
    if rec.cut:
        _info(args, f"  {rec.cut}")
    for w in res.results.get("warnings", []):
        _info(args, f"warning: {w}")
    return res.report_path


def _compare(args) -> Path:
    from diagnose.workflows import compare

    res = compare(
        args.model,
        args.source,
        args.target,
        strategies=args.strategies,
        epochs=args.epochs,
        lr=args.lr,
        unfreeze=args.unfreeze,
        bn=args.bn,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_targets=args.lora_targets,
        max_forgetting=args.max_forgetting,
        resume=args.resume,
        save_checkpoints=args.save_checkpoints,
        seeds=args.seeds,
        executor=args.executor,
        ray_address=args.ray_address,
        **_shared_kwargs(args),
    )
    for s in res.strategies:
        acc = (s.get("target") or {}).get("test_accuracy")
        spread = ((s.get("spread") or {}).get("target") or {}).get("test_accuracy") or {}
        std = spread.get("std")
        shown = f"{acc:.3f}" if isinstance(acc, float) else "-"
        shown += f" ± {std:.3f}" if isinstance(std, float) else ""
        _info(args, f"{s['name']:>18}: {s['status']:<10} test accuracy {shown}")
    best = Selection.from_dict(res.results.get("comparison_recommendation")).strategy
    _info(args, f"measured best: {best}")
    return res.report_path


def _audit(args) -> Path:
    from diagnose.workflows import audit

    if args.source is None:
        raise ValueError("audit needs --source DATA: forgetting is measured on source images.")
    res = audit(args.model, args.finetuned, args.source, args.target, **_shared_kwargs(args))
    _info(args, f"verdict: {res.results.get('verdict')}")
    return res.report_path


def _report(args) -> Path:
    from diagnose.report import render_report_file

    return render_report_file(args.results, args.out)


def _demo(args) -> Path:
    from diagnose.workflows import run_demo

    overview = run_demo(
        args.out,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        trial_budget=args.trial_budget,
    )
    for row in overview["scenarios"]:
        _info(args, f"{row['target']}: {row.get('strategy') or row.get('error')}")
    return Path(args.out) / "report.html"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diagnose`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    set_threads(args.threads)
    try:
        # SIGTERM takes the same path as Ctrl-C: finished work is already on disk.
        with stop_on_signals():
            return _run(args)
    except KeyboardInterrupt:
        print(
            "diagnose: interrupted; finished results are kept in the output directory",
            file=sys.stderr,
        )
        return 130
    except (ValueError, TypeError, ImportError, OSError) as exc:  # the input or the set-up
        if args.debug:
            raise
        # An error that names a public parameter says its flag.
        message = exc.in_flag_words() if isinstance(exc, UsageError) else str(exc)
        message = " ".join(message.split()) or type(exc).__name__
        print(f"diagnose: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # an internal error: still one line unless --debug
        if args.debug:
            raise
        print(
            f"diagnose: internal error: {type(exc).__name__}: {exc} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
