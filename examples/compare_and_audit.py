"""Compare fine-tuning strategies, then audit the best checkpoint for forgetting.

Equivalent shell commands::

    diagnose compare --model demo --source demo:digits --target demo:digits-invert \
        --strategies feature_extraction,partial,lp_ft --epochs 3 --save-checkpoints --out cmp
    diagnose audit --model demo --finetuned cmp/checkpoints/<best>.pt \
        --source demo:digits --target demo:digits-invert --out cmp/audit

    python examples/compare_and_audit.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import diagnose


def run(out: str = "cmp", epochs: int = 3, max_samples: int | None = None) -> dict:
    res = diagnose.compare(
        "demo",
        "demo:digits",
        "demo:digits-invert",
        strategies="feature_extraction,partial,lp_ft",
        epochs=epochs,
        max_samples=max_samples,
        save_checkpoints=True,
        out=out,
        progress=False,
    )
    for s in res.strategies:
        target, forgetting = s.get("target") or {}, s.get("forgetting") or {}
        print(
            f"{s['name']:>18}: {s['status']:<8} test {target.get('test_accuracy')!s:.5}  "
            f"agreement {forgetting.get('agreement')!s:.5}"
        )
    best = res.to_dict()["comparison_recommendation"]["strategy"]
    checkpoint = Path(out) / "checkpoints" / f"{best}.pt"
    report = diagnose.audit(
        "demo",
        checkpoint,
        "demo:digits",
        "demo:digits-invert",
        out=Path(out) / "audit",
        progress=False,
    )
    print(f"measured best: {best}; audit: {report.to_dict()['verdict']}")
    return {"best": best, "compare": res.to_dict(), "audit": report.to_dict()}


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "cmp")
