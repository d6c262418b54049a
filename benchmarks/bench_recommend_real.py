"""The measured recommendation against the independent oracle, on real cases (issue 15).

For every real case of :mod:`benchmarks.real_cases` (real pretrained weights,
real cross-dataset targets, two label budgets, several seeds) this runs
``diagnose.assess`` the way a user would (the model object, the ImageFolder
of the labelled images the case allows, the default ``--trial-budget``) and
reads the oracle's test accuracy of the configuration it recommends from
``benchmarks/oracle_results.json`` (a separate plain training loop with a
tuned LR per configuration, scored on unused test images; see
``oracle_recommend.py``). Nothing here retrains the oracle.

Figures per case and budget:
- regret: the oracle's best mean test accuracy minus the oracle's mean for the
  recommended configuration, in points, beside the oracle's seed spread;
- compute: the race's FLOPs over the full sweep's (every candidate at the full
  epochs under the same folds).
- the peer: the regret of a full sweep that picks by its own validation split
  (every oracle configuration trained on the same seed's images, the best
  ``val_acc`` taken; ties averaged), read from the same oracle file. It is what
  the labelled images allow a careful engineer with five times the race's
  compute, so a regret near it is at the data's noise floor;
- seed regret: the same two picks scored on that seed's own oracle runs only
  (its best test accuracy minus the pick's).
Goal: regret <= 1 point at <= 20% of the compute.

    python benchmarks/bench_recommend_real.py [--seeds 0,1] [--budget 0.2] [--cases a,b] [--budgets 10,40]

Writes ``benchmarks/recommend_real_results.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import diagnose  # noqa: E402
from benchmarks.real_cases import CASE_NAMES, cases  # noqa: E402

ORACLE = HERE / "oracle_results.json"
OUT = HERE / "recommend_real_results.json"


def oracle_config(rec: dict, stages: tuple[str, ...]) -> str | None:
    """The oracle configuration that trains what the recommendation trains (None: not in its grid)."""
    strategy = rec["strategy"]
    if strategy == "lora":
        rank = (rec.get("lora") or {}).get("rank")
        return None if rank is None else f"lora_r{rank}"
    if strategy != "partial":
        return strategy
    mods = rec.get("unfreeze") or []
    k = sum(1 for s in stages if any(m == s or m.startswith(s + ".") for m in mods))
    n = len(stages)
    return "partial_half" if k == math.ceil(n / 2) else f"partial_last{k}"


def saved_modules(row: dict) -> list[str] | None:
    """The modules a saved row's recommendation trains: ``unfreeze``, or the list in its ``cut``.

    Rows saved before ``unfreeze`` was kept carry it only inside the cut's text,
    "everything after X trains (a, b, fc)"; None when neither is there.
    """
    if row.get("unfreeze") is not None:
        return list(row["unfreeze"])
    cut = row.get("cut") or ""
    if "(" not in cut or not cut.endswith(")"):
        return None
    return [m.strip() for m in cut[cut.index("(") + 1 : -1].split(",") if m.strip()]


def row_config(row: dict, stages: tuple[str, ...]) -> str | None:
    """The oracle configuration of a saved row, derived again from what it trains.

    A row's stored ``oracle_config`` is only a copy; deriving it from the
    recommendation's own modules means a merged or hand-edited row cannot
    carry a label that disagrees with its cut.
    """
    pick = next((c for c in row.get("candidates") or [] if c["key"] == row.get("pick")), None)
    strategy = None if pick is None else pick["strategy"]
    mods = saved_modules(row)
    if strategy == "lora":
        return candidate_config(pick, len(stages))
    if strategy is None or mods is None or not stages:
        return row.get("oracle_config")
    return oracle_config({"strategy": strategy, "unfreeze": mods}, stages)


def candidate_config(cand: dict, n_stages: int) -> str | None:
    """The oracle configuration of a race candidate (its strategy, partial's depth, LoRA's rank)."""
    if cand.get("strategy") == "lora":
        return f"lora_r{cand.get('lora_rank') or cand.get('rank')}"
    if cand.get("strategy") != "partial":
        return cand.get("strategy")
    depth = cand.get("depth")
    return "partial_half" if depth == math.ceil(n_stages / 2) else f"partial_last{depth}"


def rule_picks(row: dict, n_stages: int, tolerance: float = 0.005) -> dict:
    """The race's pick under three rules, from the saved candidates (no re-run):

    - ``winner``: the best held-out accuracy;
    - ``tie_loss``: the cheapest finalist within noise, within ``tolerance`` of the
      winner's accuracy AND not measurably worse in held-out loss (the product's
      rule; None for rows saved before the loss gap was recorded);
    - ``tie``: the same without the loss condition (the earlier rule);
    - ``cheapest_within_noise``: the cheapest finalist whose paired interval on
      the gap to the winner includes 0 (the earlier rule).
    """
    cands = {c["key"]: c for c in row.get("candidates") or []}
    winner = cands.get(row.get("race_winner"))
    if winner is None:
        return {}
    top = len(winner["rungs"])
    finalists = [c for c in cands.values() if c["status"] == "ok" and len(c["rungs"]) == top]
    noise = [c for c in finalists if c.get("gap_to_winner") and c["gap_to_winner"]["ci_low"] <= 0]
    tied = [c for c in noise if c["gap_to_winner"]["mean"] <= tolerance + 1e-12]
    has_loss = all("loss_gap_to_winner" in c for c in finalists)
    tied_loss = [
        c
        for c in tied
        if has_loss and c["loss_gap_to_winner"] and c["loss_gap_to_winner"]["ci_low"] <= 0
    ]

    def cost(c):
        return c.get("full_run_flops_estimate") or math.inf

    picks = {
        "winner": winner,
        "tie_loss": min([winner, *tied_loss], key=cost) if has_loss else None,
        "tie": min([winner, *tied], key=cost),
        "cheapest_within_noise": min([winner, *noise], key=cost),
    }
    return {rule: None if c is None else candidate_config(c, n_stages) for rule, c in picks.items()}


def _seed_figures(cell: dict, seed: int, config: str | None) -> dict:
    """The sweep-by-validation peer's regret, and both picks' regret on ``seed``'s own runs."""
    configs = {c: s for c, s in cell["configs"].items() if seed in s.get("seeds", ())}
    if not configs:
        return {}
    at = {c: s["seeds"].index(seed) for c, s in configs.items()}
    val = {c: configs[c]["val_acc"][at[c]] for c in configs}
    test = {c: configs[c]["test_acc"][at[c]] for c in configs}
    chosen = [c for c in configs if val[c] == max(val.values())]
    peer = 100 * sum(cell["best_mean"] - configs[c]["mean"] for c in chosen) / len(chosen)
    top = max(test.values())
    return {
        "sweep_val_pick": chosen,
        "sweep_val_regret_points": peer,
        "sweep_val_seed_regret_points": 100 * sum(top - test[c] for c in chosen) / len(chosen),
        "seed_regret_points": None if config not in test else 100 * (top - test[config]),
    }


def score(row: dict, summary: dict) -> dict:
    """``row`` (the product's recommendation on one case) with the oracle's figures added.

    ``oracle_tie``: VALIDATION.md's reading of the oracle itself: the
    recommended configuration is the oracle's best or within the spread across
    seeds of it (the oracle summary's ``tied_with_best``: the larger std of
    the two configurations).
    """
    cell = summary[row["case"]][str(row["budget"])]
    picked = cell["configs"].get(row["oracle_config"]) if row["oracle_config"] else None
    best = cell["configs"][cell["best"]]
    regret = None if picked is None else 100 * (cell["best_mean"] - picked["mean"])
    by_rule = {
        rule: None
        if cfg is None or cfg not in cell["configs"]
        else 100 * (cell["best_mean"] - cell["configs"][cfg]["mean"])
        for rule, cfg in (row.get("rule_picks") or {}).items()
    }
    return {
        **row,
        "regret_by_rule": by_rule,
        "oracle_best": cell["best"],
        "oracle_best_mean": cell["best_mean"],
        "oracle_best_std": best["std"],
        "oracle_seeds": best.get("n_seeds"),
        "oracle_recommended_mean": None if picked is None else picked["mean"],
        "oracle_recommended_std": None if picked is None else picked["std"],
        "regret_points": regret,
        **_seed_figures(cell, row["seed"], row["oracle_config"]),
        "oracle_tie": None
        if picked is None
        else row["oracle_config"] in (cell["best"], *cell.get("tied_with_best", ())),
    }


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'case':<26}{'budget':>7}{'seed':>5}  {'oracle best (mean±sd)':<32}"
        f"{'recommended (oracle mean±sd)':<36}{'regret (pts)':>13}{'tie':>5}{'compute':>9}"
    )
    for r in rows:
        regret = "—" if r.get("regret_points") is None else f"{r['regret_points']:+.1f}"
        comp = "—" if r["compute_fraction"] is None else f"{r['compute_fraction']:.2f}"
        best = (
            f"{r['oracle_best']} {r['oracle_best_mean']:.3f}±{r['oracle_best_std']:.3f}"
            if "oracle_best" in r
            else "—"
        )
        rec = str(r["recommended"])[:21]
        if r.get("oracle_recommended_mean") is not None:
            rec += f" {r['oracle_recommended_mean']:.3f}±{r['oracle_recommended_std']:.3f}"
        tie = {True: "yes", False: "no", None: "—"}[r.get("oracle_tie")]
        print(
            f"{r['case']:<26}{r['budget']:>7}{r['seed']:>5}  {best:<32}"
            f"{rec:<36}{regret:>13}{tie:>5}{comp:>9}"
        )
        if r.get("regret_by_rule"):
            print(
                "      regret by pick rule: "
                + ", ".join(
                    f"{k} {'—' if v is None else f'{v:+.1f}'} ({r['rule_picks'][k]})"
                    for k, v in r["regret_by_rule"].items()
                )
            )


def _print_peer(rows: list[dict]) -> None:
    """The race's mean regrets beside the sweep-by-validation peer's, on the same rows."""
    keys = (
        "regret_points",
        "sweep_val_regret_points",
        "seed_regret_points",
        "sweep_val_seed_regret_points",
    )
    both = [r for r in rows if all(r.get(k) is not None for k in keys)]

    def mean(key: str) -> str:
        return f"{sum(r[key] for r in both) / len(both):.1f}" if both else "—"

    print(
        f"peer (a full sweep picking by its validation split), on the {len(both)} rows with "
        f"both: mean regret "
        f"{mean('sweep_val_regret_points')} points against the race's {mean('regret_points')}; "
        f"on each seed's own runs {mean('sweep_val_seed_regret_points')} against "
        f"{mean('seed_regret_points')}"
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1", help="case seeds to run (the oracle has 0,1)")
    ap.add_argument("--budget", type=float, default=0.2, help="--trial-budget of assess")
    ap.add_argument("--cases", default=",".join(CASE_NAMES))
    ap.add_argument("--budgets", default="10,40", help="labels per class to run")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--rescore", action="store_true", help="only re-read the oracle for the saved rows"
    )
    ap.add_argument(
        "--inputs", default="", help="with --rescore: comma-separated row files to merge into --out"
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.rescore:
        sources = [Path(p) for p in args.inputs.split(",") if p] or [out]
        rows = [r for p in sources for r in json.loads(p.read_text())["rows"]]
    else:
        rows = []
        seeds = tuple(int(s) for s in args.seeds.split(","))
        budgets = tuple(int(b) for b in args.budgets.split(","))
        for case in cases(names=tuple(args.cases.split(",")), seeds=seeds, budgets=budgets):
            t0 = time.perf_counter()
            res = diagnose.assess(
                case.model_fn(),
                str(case.source_dir),
                str(case.target_dir),
                head=case.head,
                image_size=case.image_size,
                normalize=",".join(str(v) for v in (*case.mean, *case.std)),
                trial_budget=args.budget,
                progress=False,
                seed=case.seed,
            )
            rec = res.to_dict()["recommendation"]  # as results.json holds it
            trials = rec.get("trials") or {}
            config = oracle_config(rec, tuple(case.stages))
            rows.append(
                {
                    "n_stages": len(case.stages),
                    "case": case.name,
                    "budget": case.budget,
                    "seed": case.seed,
                    "oracle_config": config,
                    "recommended": config
                    or f"{rec['strategy']} depth {rec.get('depth')} (not in the oracle grid)",
                    "cut": rec.get("cut"),
                    "unfreeze": rec.get("unfreeze"),
                    "head_lr": rec.get("head_lr"),
                    "measured": rec.get("measured"),
                    "race_winner": trials.get("winner"),
                    "within_noise": trials.get("within_noise"),
                    "compute_fraction": trials["flops_spent"] / trials["full_flops_estimate"]
                    if trials.get("full_flops_estimate")
                    else None,
                    "race_wall_s": trials.get("wall_s"),
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "pick": trials.get("pick"),
                    "tied": trials.get("tied"),
                    "leaders": trials.get("leaders"),
                    # Every candidate's rungs and gap to the winner: picks under another
                    # rule can be re-scored from these without re-running the race.
                    "candidates": [
                        {
                            k: c.get(k)
                            for k in (
                                "key",
                                "strategy",
                                "depth",
                                "lora_rank",
                                "modules",
                                "lr",
                                "rungs",
                                "gap_to_winner",
                                "loss_gap_to_winner",
                                "full_run_flops_estimate",
                                "status",
                            )
                        }
                        for c in trials.get("candidates", [])
                    ],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    oracle = json.loads(ORACLE.read_text()) if ORACLE.exists() else {}
    for r in rows:
        stages = tuple(((oracle.get("cases") or {}).get(r["case"]) or {}).get("stages") or ())
        n_stages = r.get("n_stages") or len(stages)
        config = row_config(r, stages)
        if config != r.get("oracle_config"):
            print(
                f"{r['case']} b{r['budget']} s{r['seed']}: the saved label {r.get('oracle_config')} "
                f"disagrees with what the recommendation trains ({r.get('cut')}): {config}"
            )
            r["oracle_config"] = r["recommended"] = config
        if r.get("candidates") and n_stages:
            r["rule_picks"] = rule_picks(r, n_stages)
    if ORACLE.exists():
        summary = oracle.get("summary", oracle)
        rows = [score(r, summary) for r in rows]
        out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    else:
        print(f"{ORACLE} is missing: run oracle_recommend.py, then --rescore.")
    print_table(rows)
    scored = [r["regret_points"] for r in rows if r.get("regret_points") is not None]
    if scored:
        print(
            f"\nregret: mean {sum(scored) / len(scored):.1f} points; <= 1 point on "
            f"{sum(v <= 1 + 1e-9 for v in scored)} of {len(scored)} runs; within the oracle's "
            f"seed spread on {sum(bool(r.get('oracle_tie')) for r in rows)} of {len(rows)}"
        )
        _print_peer(rows)
    return {"rows": rows}


if __name__ == "__main__":
    main()
