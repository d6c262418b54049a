"""A torchvision architecture with a local weights file (nothing is downloaded).

With real weights you would pass the file you already have, e.g.
``--weights ~/weights/resnet18-f37072fd.pth``. To keep this example offline
it saves a randomly initialised ResNet-18 state dict and uses that.

    python examples/torchvision_local_weights.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_imagefolder import write_imagefolder  # noqa: E402

from diagnose.cli import main  # noqa: E402


def run(out: str, trial_budget: float = 0.2) -> int:
    """Assess; ``trial_budget`` is the recommendation's trial race (0: rules only, no training)."""
    work = Path(tempfile.mkdtemp(prefix="diagnose-tv-"))
    weights = work / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    write_imagefolder("demo:digits", work / "source", per_class=6)
    write_imagefolder("demo:digits-rotate", work / "target", per_class=6)
    return main(
        [
            "assess",
            "--model",
            "torchvision:resnet18",
            "--weights",
            str(weights),
            "--source",
            str(work / "source"),
            "--target",
            str(work / "target"),
            "--image-size",
            "64",
            "--normalize",
            "0.485,0.456,0.406,0.229,0.224,0.225",
            "--out",
            out,
            "--quiet",
            "--trial-budget",
            str(trial_budget),
        ]
    )


if __name__ == "__main__":
    sys.exit(run(sys.argv[1] if len(sys.argv) > 1 else "tv-report"))
