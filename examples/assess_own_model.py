"""Assess your own ``nn.Module`` (a ``module:function``) on ImageFolder data.

Equivalent shell command, run from this folder::

    diagnose assess --model my_model:build --source data/source --target data/target \
        --image-size 32 --out my-report

Here the model is untrained (``build()`` gives random weights); with your own
trained weights add ``--weights my_weights.pt`` (a state dict).

    python examples/assess_own_model.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # so that "my_model:build" is importable

from make_imagefolder import write_imagefolder  # noqa: E402

from diagnose.cli import main  # noqa: E402


def run(out: str, trial_budget: float = 0.2) -> int:
    """Assess; ``trial_budget`` is the recommendation's trial race (0: rules only, no training)."""
    data = Path(tempfile.mkdtemp(prefix="diagnose-example-"))
    write_imagefolder("demo:digits", data / "source", per_class=12)
    write_imagefolder("demo:digits-invert", data / "target", per_class=12)
    return main(
        [
            "assess",
            "--model",
            "my_model:build",
            "--source",
            str(data / "source"),
            "--target",
            str(data / "target"),
            "--out",
            out,
            "--quiet",
            "--trial-budget",
            str(trial_budget),
        ]
    )


if __name__ == "__main__":
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else "my-report"))
