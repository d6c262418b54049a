"""``diagnose demo``: the whole pipeline on the demo model and the demo domains.

Each shifted target is assessed against the clean source and every
fine-tuning strategy is run on it (``diagnose compare``); each gets its own
results.json and report.html in a sub-folder, and the top-level report.html
compares the scenarios side by side. Everything is offline.
"""

from __future__ import annotations

import time
from pathlib import Path

from diagnose.core import (
    SCHEMA_VERSION,
    LayerResult,
    Recommendation,
    Selection,
    check_params,
    environment,
)
from diagnose.data import DEMO_DOMAINS, load_domain
from diagnose.decide import DEFAULT_TRIAL_BUDGET
from diagnose.models import load_model
from diagnose.report import write_outputs
from diagnose.workflows.assessment import assess

__all__ = [
    "DEMO_SOURCE",
    "DEMO_TARGETS",
    "run_demo",
]

DEMO_SOURCE = "demo:digits"
DEMO_TARGETS = (
    "demo:digits-noise",
    "demo:digits-invert",
    "demo:digits-rotate",
    "demo:digits-relabel",
)


def _scenario_row(target: str, res: dict, folder: str) -> dict:
    layers = [LayerResult.from_dict(x) for x in res.get("layers") or []]
    pads = [layer.gap_value("pad") for layer in layers]
    accs = [layer.accuracy("target") for layer in layers]
    valid = [a for a in accs if a is not None]
    rec = Recommendation.from_dict(res.get("recommendation"))
    measured = Selection.from_dict(res.get("comparison_recommendation"))
    return {
        "measured_best": measured.strategy,
        "measured_test_accuracy": measured.test_accuracy,
        "agrees": measured.agrees_with_assessment,
        "regret": measured.regret,
        "target": target,
        "description": DEMO_DOMAINS.get(target, ""),
        "status": "ok",
        "strategy": rec.strategy,
        "measured": rec.measured,
        "unfreeze": None if rec.unfreeze is None else list(rec.unfreeze),
        "head_lr": (rec.lr or {}).get("head"),
        "pad_first": pads[0] if pads else None,
        "pad_last": pads[-1] if pads else None,
        "probe_best": max(valid) if valid else None,
        "probe_last": accs[-1] if accs else None,
        "target_head_accuracy": (res.get("head_accuracy") or {}).get("target_head_accuracy"),
        "report": f"{folder}/report.html",
    }


def _demo_audit(loaded, rows: list[dict], out: Path, **kwargs) -> dict:
    """Audit the first scenario's measured-best checkpoint, as a user of compare would."""
    row = next((r for r in rows if r.get("status") == "ok" and r.get("measured_best")), None)
    if row is None:
        return {"status": "failed", "error": "no comparison finished, so there is no checkpoint"}
    folder = row["report"].split("/", 1)[0]
    ckpt = out / folder / "checkpoints" / f"{row['measured_best']}.pt"
    try:
        from diagnose.workflows.checkpoint_audit import audit

        res = audit(
            loaded, str(ckpt), DEMO_SOURCE, row["target"], out=out / folder / "audit", **kwargs
        )
    except Exception as exc:  # the audit failing must not lose the comparisons
        return {"status": "failed", "error": str(exc), "target": row["target"]}
    return {
        "status": "ok",
        "target": row["target"],
        "strategy": row["measured_best"],
        "verdict": res.to_dict().get("verdict"),
        "report": f"{folder}/audit/report.html",
    }


def run_demo(
    out: str | Path = "diagnose-report",
    *,
    targets: tuple[str, ...] = DEMO_TARGETS,
    seed: int = 0,
    device: str = "auto",
    epochs: int = 3,
    run_compare: bool = True,
    progress: bool = True,
    trial_budget: float = DEFAULT_TRIAL_BUDGET,
) -> dict:
    """Run the demo and write ``out/report.html``; returns the overview results dict.

    Each assessment races its candidates at ``trial_budget`` (the default, as a user's
    ``diagnose assess`` does), so each scenario shows the race's pick; with
    ``run_compare`` (the default) every strategy is then fine-tuned for ``epochs``
    epochs on each target, and the row sets the race's pick beside the measured best.
    """
    check_params("demo", trial_budget=trial_budget)  # before any scenario runs
    t0 = time.perf_counter()
    out = Path(out)
    loaded = load_model("demo", progress=progress)
    source = load_domain(DEMO_SOURCE)  # loaded once, shared by every scenario
    rows, warnings = [], []
    for target in targets:
        folder = target.split(":", 1)[-1]
        try:
            workflow = assess
            kwargs: dict = {"trial_budget": trial_budget}
            if run_compare:
                from diagnose.workflows.comparison import compare as workflow

                kwargs.update(epochs=epochs, save_checkpoints=True)
            res = workflow(
                loaded,
                source,
                target,
                seed=seed,
                device=device,
                out=out / folder,
                progress=progress,
                **kwargs,
            ).to_dict()
            rows.append(_scenario_row(target, res, folder))
        except Exception as exc:  # one scenario failing must not lose the others
            rows.append(
                {
                    "target": target,
                    "status": "failed",
                    "error": str(exc),
                    "description": DEMO_DOMAINS.get(target, ""),
                }
            )
            warnings.append(f"{target} failed: {exc}")
    audit_row = None
    if run_compare:
        audit_row = _demo_audit(loaded, rows, out, seed=seed, device=device, progress=progress)
        if audit_row.get("status") == "failed":
            warnings.append(f"audit failed: {audit_row['error']}")
    env = environment(device, seed)
    env["wall_s"] = time.perf_counter() - t0
    overview = {
        "schema": SCHEMA_VERSION,
        "kind": "demo",
        "source": DEMO_SOURCE,
        "scenarios": rows,
        "model_notes": loaded.notes,
        "compare_epochs": epochs if run_compare else None,
        "audit": audit_row,
        "warnings": warnings,
        "environment": env,
    }
    write_outputs(overview, out)
    return overview
