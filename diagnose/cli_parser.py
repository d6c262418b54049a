"""The ``diagnose`` command line: its subcommands and flags.

:func:`build_parser` defines every subcommand (assess, compare, audit, report,
demo) and validates flag values as argparse parses them. An error of the Python
API that names a parameter is a :class:`diagnose.core.UsageError`, which says
its flag on the CLI (``--`` and the parameter's name with dashes; :func:`flags_of`
lists the flags, which a test holds to that rule).
"""

from __future__ import annotations

import argparse
import functools

from diagnose.core import PARAMS

__all__ = ["build_parser", "flags_of"]


class _Parser(argparse.ArgumentParser):
    """One-line errors, and a record of every option's parameter name and flag
    (``flags``, shared by a parser and its subcommands)."""

    def __init__(self, *args, flags: dict[str, str] | None = None, **kwargs):
        self.flags = {} if flags is None else flags  # before argparse adds --help
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if action.option_strings:
            self.flags.setdefault(action.dest, max(action.option_strings, key=len))
        return action

    def error(self, message: str):  # one line, like every other bad-input error
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        self.exit(2, f"diagnose: error: {where}{message} (see --help)\n")


def _declared(p: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """The flag of a declared parameter: its type and range, or its choices, from
    :data:`diagnose.core.PARAMS`."""
    param = PARAMS[name]
    if param.kind == "choice":
        kwargs["choices"] = param.choices
    else:
        kwargs["type"] = param.parse
    p.add_argument(param.flag, **kwargs)


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
    twice = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if twice:
        raise argparse.ArgumentTypeError(f"names a layer more than once: {', '.join(twice)}")
    return names


def _model_and_data_args(
    p: argparse.ArgumentParser, *, target_required: bool, default_out: str
) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="demo | torchvision:NAME | timm:NAME | pkg.module:function | checkpoint path",
    )
    p.add_argument(
        "--weights",
        help="state-dict file for the model, or 'random' for an untrained torchvision/timm model",
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
    _declared(
        p,
        "image_size",
        help="resize images to N x N pixels (a timm ViT is created at this size)",
    )
    _declared(
        p,
        "pool",
        default="mean",
        help="token pooling of transformer blocks: mean over tokens or the class token",
    )
    p.add_argument("--normalize", help="'none' or MEAN,STD (one pair or one per channel)")
    p.add_argument(
        "--out", default=default_out, help=f"output directory (default: ./{default_out})"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    _declared(p, "seed", default=0)
    _declared(p, "batch_size", default=64)
    _declared(p, "max_samples", help="use at most N images per domain")


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
    _declared(
        p,
        "threads",
        help="CPU threads for torch and the BLAS libraries, set once for the run (default: "
        "torch's default; on a machine shared with other CPU-bound work, fewer than the cores)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``diagnose`` parser with every subcommand."""
    parser = _Parser(
        prog="diagnose",
        description="Diagnostics for transfer learning: how far is the target from what a "
        "pretrained model knows, and how should it be adapted?",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=functools.partial(_Parser, flags=parser.flags)
    )

    for add in (_assess_parser, _compare_parser, _audit_parser, _report_parser, _demo_parser):
        add(sub)
    return parser


def _assess_parser(sub) -> None:
    """``diagnose assess``."""
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
    _declared(
        a,
        "max_forgetting",
        help="forgetting budget (source-accuracy drop, 0-1) the recommendation must respect",
    )
    _declared(
        a,
        "trial_budget",
        default=0.2,
        help="fraction (0-1) of a full sweep's training FLOPs the recommendation's trial race "
        "may spend; 0 skips the race and keeps the rules' unmeasured prediction (default 0.2)",
    )
    _declared(
        a,
        "executor",
        default="local",
        help="local: the race's trials one after another; ray: one Ray task (one GPU or CPU) "
        "per trial, each rung at once",
    )
    a.add_argument(
        "--ray-address", help="address of a running Ray cluster (default: start a local Ray)"
    )
    _common(a)


def _lora_args(c: argparse.ArgumentParser) -> None:
    """``compare``'s LoRA settings."""
    _declared(c, "lora_rank", default=8, help="rank of lora's update (default: 8)")
    _declared(
        c,
        "lora_alpha",
        default=16.0,
        help="lora's scale numerator, the update is B A * alpha / rank (default: 16)",
    )
    c.add_argument(
        "--lora-targets",
        help="comma-separated names or suffixes of the layers lora adapts (default: every "
        "Linear and Conv2d of the blocks; --unfreeze k: of the last k blocks)",
    )


def _compare_parser(sub) -> None:
    """``diagnose compare``."""
    c = sub.add_parser("compare", help="fine-tune with each strategy: accuracy, forgetting, cost")
    _model_and_data_args(c, target_required=True, default_out="diagnose-compare")
    c.add_argument("--strategies", default="all", help="all, or comma-separated strategy names")
    _declared(c, "epochs", default=3)
    _declared(c, "lr", help="head LR (default: the LR range test's suggestion)")
    c.add_argument(
        "--unfreeze",
        type=_depths,
        help="blocks the 'partial' strategy tunes, from the top; several (1,2,4) run partial "
        "once per depth, each its own row",
    )
    _lora_args(c)
    _declared(
        c,
        "bn",
        default="frozen",
        help="BatchNorm statistics in frozen blocks (default: frozen)",
    )
    _declared(
        c,
        "max_forgetting",
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
    _declared(
        c,
        "seeds",
        default=1,
        help="training seeds per strategy (--seed, --seed+1, ...): means with error bars",
    )
    _declared(
        c,
        "executor",
        default="local",
        help="local: one run after another; ray: one Ray task (one GPU or CPU) per run",
    )
    c.add_argument(
        "--ray-address", help="address of a running Ray cluster (default: start a local Ray)"
    )
    _common(c)


def _audit_parser(sub) -> None:
    """``diagnose audit``."""
    u = sub.add_parser(
        "audit", help="post-training audit: what a fine-tuned checkpoint forgot, and where"
    )
    _model_and_data_args(u, target_required=False, default_out="diagnose-audit")
    u.add_argument(
        "--finetuned",
        required=True,
        help="state dict of the fine-tuned model (same architecture; the head may differ), "
        "or a peft adapter directory (compare --save-checkpoints writes one for lora)",
    )
    _common(u)


def _report_parser(sub) -> None:
    """``diagnose report``."""
    r = sub.add_parser("report", help="re-render report.html from a results.json")
    r.add_argument("results", help="path to a results.json written by a diagnose command")
    r.add_argument("--out", help="output HTML path (default: report.html beside the results)")
    _common(r)


def _demo_parser(sub) -> None:
    """``diagnose demo``."""
    d = sub.add_parser("demo", help="run the whole pipeline offline on the demo model and domains")
    d.add_argument(
        "--out", default="diagnose-report", help="output directory (default: ./diagnose-report)"
    )
    d.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    _declared(d, "seed", default=0)
    _declared(
        d,
        "trial_budget",
        default=0.2,
        help="each assessment's trial race budget, as for assess (0 skips the races)",
    )
    _common(d)


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every option's parameter name (its ``dest``) and its flag, over all subcommands
    (recorded as :func:`build_parser` added them)."""
    return dict(getattr(parser, "flags", {}))
