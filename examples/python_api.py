"""The Python API in a script: assess, read the recommendation, open the report.

python examples/python_api.py [OUT_DIR] [--no-open]
"""

from __future__ import annotations

import sys
import webbrowser

import diagnose


def run(out: str = "api-report", open_report: bool = True, trial_budget: float = 0.2) -> dict:
    result = diagnose.assess(
        "demo",  # the demo CNN, pretrained on demo:digits at first use
        source="demo:digits",
        target="demo:digits-relabel",
        out=out,
        progress=False,
        trial_budget=trial_budget,  # the trial race that measures the recommendation
    )
    rec = result.recommendation
    how = "measured by the trial race" if rec.measured else "rules only"
    print(f"strategy: {rec.strategy} ({how})  head LR: {rec.lr['head']:.3g}")
    print(f"  {rec.cut or list(rec.unfreeze or ())}")
    for reason in rec.reasons:
        print(" -", reason)
    for layer in result.to_dict()["layers"]:
        gap = layer["gap"] or {}
        print(
            f"{layer['name']:>8}: target probe {layer['probe']['target']['accuracy']:.3f}  PAD {gap.get('pad')}"
        )
    if open_report:
        webbrowser.open(result.report_path.resolve().as_uri())
    return result.to_dict()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    run(args[0] if args else "api-report", open_report="--no-open" not in sys.argv)
