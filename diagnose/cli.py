"""The ``diagnose`` command line.

Exit codes: 0 success, 1 an unexpected internal error, 2 bad input (a one-line
message on stderr, no traceback unless ``--debug``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other bad-input error
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"diagnose: error: {where}{message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _memory_size(text: str) -> int:
    from probes.capture import parse_size

    try:
        return parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a size in bytes with an optional unit (KB, MB, GB, KiB, MiB, GiB), "
            f"e.g. --max-memory 2GB; got {text!r}"
        ) from None


def _layers(text: str) -> str | list[str]:
    if text == "auto":
        return "auto"
    names = [n.strip() for n in text.split(",")]
    if not names or any(not n for n in names):
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or comma-separated layer names, got {text!r}"
        )
    return names


def _model_and_data_args(
    p: argparse.ArgumentParser, *, target_required: bool, default_out: str
) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="demo | torchvision:NAME | pkg.module:function | checkpoint path",
    )
    p.add_argument(
        "--weights",
        help="state-dict file for the model, or 'random' for an untrained torchvision model",
    )
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow loading pickled (non state-dict) checkpoints: only for files you trust",
    )
    p.add_argument(
        "--head", help="name of the source classification head (default: the last nn.Linear)"
    )
    p.add_argument(
        "--source", help="source data: demo:NAME | ImageFolder directory | pkg.module:function"
    )
    p.add_argument(
        "--target", required=target_required, help="target data (same forms as --source)"
    )
    p.add_argument(
        "--layers", type=_layers, default="auto", help="auto, or comma-separated module names"
    )
    p.add_argument("--image-size", type=_positive_int, help="resize images to N x N pixels")
    p.add_argument("--normalize", help="'none' or MEAN,STD (one pair or one per channel)")
    p.add_argument(
        "--out", default=default_out, help=f"output directory (default: ./{default_out})"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--max-samples", type=_positive_int, help="use at most N images per domain")


def _depths(value: str) -> int | list[int]:
    """``2`` -> 2; ``1,2,4`` -> [1, 2, 4] (argparse type of --unfreeze)."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    try:
        depths = [int(p) for p in parts]
    except ValueError:
        depths = []
    if not depths or min(depths) < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number or a comma-separated list of them (1,2,4), "
            f"got {value!r}"
        )
    return depths[0] if len(depths) == 1 and "," not in value else depths


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or info lines")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diagnose",
        description="Diagnostics for transfer learning: how far is the target from what a "
        "pretrained model knows, and how should it be adapted?",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    a = sub.add_parser(
        "assess", help="pre-project assessment: probes, domain gap, transferability, LR test"
    )
    _model_and_data_args(a, target_required=False, default_out="diagnose-report")
    a.add_argument(
        "--max-memory",
        type=_memory_size,
        help="memory budget for captured features, e.g. 2GB or 512MiB: over it they are "
        "kept in temporary files on disk (default: no limit)",
    )
    a.add_argument(
        "--max-forgetting",
        type=float,
        help="forgetting budget (source-accuracy drop, 0-1) the recommendation must respect",
    )
    a.add_argument(
        "--trial-budget",
        type=float,
        default=0.2,
        help="fraction (0-1) of a full sweep's training FLOPs the recommendation's trial race "
        "may spend; 0 skips the race and keeps the rules' unmeasured prediction (default 0.2)",
    )
    _common(a)

    c = sub.add_parser("compare", help="fine-tune with each strategy: accuracy, forgetting, cost")
    _model_and_data_args(c, target_required=True, default_out="diagnose-compare")
    c.add_argument("--strategies", default="all", help="all, or comma-separated strategy names")
    c.add_argument("--epochs", type=_positive_int, default=3)
    c.add_argument(
        "--lr", type=_positive_float, help="head LR (default: the LR range test's suggestion)"
    )
    c.add_argument(
        "--unfreeze",
        type=_depths,
        help="blocks the 'partial' strategy tunes, from the top; several (1,2,4) run partial "
        "once per depth, each its own row",
    )
    c.add_argument(
        "--bn",
        choices=["frozen", "train"],
        default="frozen",
        help="BatchNorm statistics in frozen blocks (default: frozen)",
    )
    c.add_argument(
        "--max-forgetting",
        type=float,
        help="forgetting budget (source-accuracy drop, or 1 - agreement) for the measured recommendation",
    )
    c.add_argument(
        "--resume", action="store_true", help="keep finished strategies in --out and run the rest"
    )
    c.add_argument(
        "--save-checkpoints",
        action="store_true",
        help="save each fine-tuned state dict under --out/checkpoints (first seed only)",
    )
    c.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        help="training seeds per strategy (--seed, --seed+1, ...): means with error bars",
    )
    c.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: one run after another; ray: one Ray task (one GPU or CPU) per run",
    )
    c.add_argument(
        "--ray-address", help="address of a running Ray cluster (default: start a local Ray)"
    )
    _common(c)

    u = sub.add_parser(
        "audit", help="post-training audit: what a fine-tuned checkpoint forgot, and where"
    )
    _model_and_data_args(u, target_required=False, default_out="diagnose-audit")
    u.add_argument(
        "--finetuned",
        required=True,
        help="state dict of the fine-tuned model (same architecture; the head may differ)",
    )
    _common(u)

    r = sub.add_parser("report", help="re-render report.html from a results.json")
    r.add_argument("results", help="path to a results.json written by a diagnose command")
    r.add_argument("--out", help="output HTML path (default: report.html beside the results)")
    _common(r)

    d = sub.add_parser("demo", help="run the whole pipeline offline on the demo model and domains")
    d.add_argument(
        "--out", default="diagnose-report", help="output directory (default: ./diagnose-report)"
    )
    d.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    d.add_argument("--seed", type=int, default=0)
    _common(d)
    return parser


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
    )
    return {**{n: getattr(args, n) for n in names}, "progress": not args.quiet}


def _run(args) -> int:
    progress = not args.quiet
    if args.command == "assess":
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
        )
        rec = res.recommendation
        how = "measured by the trial race" if rec.get("measured") else "rules only, unmeasured"
        _info(
            args,
            f"recommended strategy: {rec['strategy']} ({how}; confidence {rec['confidence']})",
        )
        if rec.get("cut"):
            _info(args, f"  {rec['cut']}")
        for w in res.results.get("warnings", []):
            _info(args, f"warning: {w}")
        print(res.report_path)
    elif args.command == "compare":
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
        best = res.results.get("comparison_recommendation", {}).get("strategy")
        _info(args, f"measured best: {best}")
        print(res.report_path)
    elif args.command == "audit":
        from diagnose.workflows import audit

        if args.source is None:
            raise ValueError("audit needs --source DATA: forgetting is measured on source images.")
        res = audit(args.model, args.finetuned, args.source, args.target, **_shared_kwargs(args))
        _info(args, f"verdict: {res.results.get('verdict')}")
        print(res.report_path)
    elif args.command == "report":
        from diagnose.report import render_report_file

        print(render_report_file(args.results, args.out))
    elif args.command == "demo":
        from diagnose.workflows import run_demo

        overview = run_demo(args.out, seed=args.seed, device=args.device, progress=progress)
        for row in overview["scenarios"]:
            _info(args, f"{row['target']}: {row.get('strategy') or row.get('error')}")
        print(Path(args.out) / "report.html")
    return 0


def _sigterm_as_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diagnose`` console script; returns the exit code."""
    args = _build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM takes the same path as Ctrl-C: finished work is already on disk.
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(
            "diagnose: interrupted; finished results are kept in the output directory",
            file=sys.stderr,
        )
        return 130
    except (ValueError, TypeError, FileNotFoundError, PermissionError, OSError) as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
