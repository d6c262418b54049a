"""Several training seeds per strategy: one results entry per strategy with means and spread.

A comparison runs each strategy once per seed (``seed``, ``seed + 1``, ...,
``seed + seeds - 1``); each (strategy, seed) run is a *unit* whose record is
the plain :func:`diagnose.training.runner.run_strategy` entry. Only the training seed
changes between units (head initialisation, batch order, ``scratch``'s
initial weights): every seed sees the same train/val/test split and source
batch, so the spread measures training noise, not sampling of the data.

With one seed the strategy's entry IS its record (results.json keeps the
fields it always had). With more, :func:`strategy_entry` merges the records:

- the headline numbers (``target``, ``forgetting``, ``cost`` fields listed in
  :data:`AVERAGED`, and the per-block ``cka`` and ``weight_drift``) are the
  MEAN over the seeds that produced a number, so every consumer that reads
  one entry per strategy (selection, report, demo) reads the mean;
- ``seeds``: the seeds whose records are present, ascending;
- ``per_seed``: those records, each with an added ``"seed"`` key;
- ``spread``: ``{group: {field: {"std", "min", "max", "n"}}}`` for every
  averaged field plus ``forgetting.mean_cka`` (the mean over blocks); ``std``
  is the sample standard deviation (ddof=1), None with fewer than 2 numbers;
- ``config``, ``curves``, ``overfitting`` and the other fields are the first
  present seed's (so the curve plots show one real run, not an average);
- ``status``: "ok" when every seed finished ok; "incomplete" while seeds are
  missing (an interrupted run; ``--resume`` runs only the missing units);
  else "failed" when any seed failed, "diverged" when any diverged, with a
  ``message`` naming the seeds.

:func:`read_previous` and :func:`finished` give ``--resume`` the finished
units of an earlier run written with the same settings.

Example::

    entry = strategy_entry("partial", [0, 1], {0: rec0, 1: rec1})
    entry["target"]["val_accuracy"]                  # mean of the two seeds
    entry["spread"]["target"]["val_accuracy"]["std"]  # np.std(..., ddof=1)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from diagnose.core import Arg, UsageError, finite, load_results, section

__all__ = [
    "AVERAGED",
    "RUN_KEYS",
    "finished",
    "finished_units",
    "read_previous",
    "resumed_text",
    "strategy_entries",
    "strategy_entry",
]

# The per-strategy numbers the report's table shows (and selection reads): averaged over seeds.
AVERAGED = {
    "target": ("val_accuracy", "test_accuracy", "best_epoch", "val_loss"),
    "forgetting": (
        "source_accuracy",
        "source_accuracy_before",
        "source_accuracy_drop",
        "agreement",
    ),
    "cost": ("wall_s", "flops", "steps", "trainable_params", "peak_mem_bytes"),
}
_PER_BLOCK = ("cka", "weight_drift")
_FINISHED = ("ok", "diverged")


def _mean(values: list) -> float | int | None:
    nums = [v for v in (finite(x) for x in values) if v is not None]
    if not nums:
        return None
    if (
        all(isinstance(x, int) and not isinstance(x, bool) for x in values)
        and len(set(values)) == 1
    ):
        return values[0]  # an integer count every seed agrees on stays an integer
    return float(np.mean(np.asarray(nums, dtype=np.float64)))


def _spread(values: list) -> dict:
    nums = np.asarray([v for v in (finite(x) for x in values) if v is not None], dtype=np.float64)
    if nums.size == 0:
        return {"std": None, "min": None, "max": None, "n": 0}
    return {
        "std": float(np.std(nums, ddof=1)) if nums.size > 1 else None,
        "min": float(nums.min()),
        "max": float(nums.max()),
        "n": int(nums.size),
    }


def _mean_cka(record: dict) -> float | None:
    vals = [finite(v) for v in section(section(record, "forgetting"), "cka").values()]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _merged(records: list[dict]) -> tuple[dict, dict]:
    """The first record with the averaged fields replaced by means, and the spread."""
    first = records[0]
    entry = {k: (dict(v) if isinstance(v, dict) else v) for k, v in first.items()}
    spread: dict[str, dict] = {}
    for group, fields in AVERAGED.items():
        if not any(isinstance(r.get(group), dict) for r in records):
            continue
        merged = dict(section(first, group))
        spread[group] = {}
        for field in fields:
            values = [section(r, group).get(field) for r in records]
            if all(v is None for v in values):
                continue
            merged[field] = _mean(values)
            spread[group][field] = _spread(values)
        if group == "forgetting":
            for key in _PER_BLOCK:
                blocks = list(
                    dict.fromkeys(b for r in records for b in section(section(r, group), key))
                )
                if blocks:
                    merged[key] = {
                        b: _mean([section(section(r, group), key).get(b) for r in records])
                        for b in blocks
                    }
            cka = [_mean_cka(r) for r in records]
            if any(v is not None for v in cka):
                spread[group]["mean_cka"] = _spread(cka)
        entry[group] = merged
    return entry, spread


def strategy_entry(name: str, seeds: list[int], records: dict[int, dict]) -> dict:
    """The results entry of strategy ``name`` from its records per seed (see the module doc).

    ``seeds`` are all the seeds the comparison asked for; ``records`` maps
    each finished seed to its run_strategy entry (or failure record).
    """
    if len(seeds) == 1:
        return records[seeds[0]]
    present = [s for s in seeds if s in records]
    per_seed = [{**records[s], "seed": s} for s in present]
    numbers = [r for r in per_seed if r.get("status") in _FINISHED]
    if numbers:
        entry, spread = _merged(numbers)
    else:
        entry, spread = {"name": name, "message": None}, {}
    failed = [r for r in per_seed if r.get("status") == "failed"]
    diverged = [r for r in per_seed if r.get("status") == "diverged"]
    missing = [s for s in seeds if s not in records]
    over = f"; the means are over the {len(numbers)} seeds that finished" if numbers else ""
    if missing:
        status = "incomplete"
        message = (
            f"{len(present)} of {len(seeds)} seeds finished (missing seed "
            f"{', '.join(map(str, missing))}); --resume runs the rest"
        )
    elif failed:
        status = "failed"
        message = "; ".join(f"seed {r['seed']}: {r.get('message')}" for r in failed) + over
    elif diverged:
        status = "diverged"
        message = (
            "; ".join(f"seed {r['seed']}: {r.get('message')}" for r in diverged)
            + f" ({len(diverged)} of {len(seeds)} seeds diverged)"
        )
        entry["diverged"] = diverged[0].get("diverged")
    else:
        status, message = "ok", None
    entry.update(
        name=name, status=status, message=message, seeds=present, per_seed=per_seed, spread=spread
    )
    return entry


def strategy_entries(names: list[str], seeds: list[int], records: dict[tuple, dict]) -> list[dict]:
    """One entry per strategy that has at least one record, in the order of ``names``."""
    out = []
    for name in names:
        mine = {s: records[(name, s)] for s in seeds if (name, s) in records}
        if mine:
            out.append(strategy_entry(name, seeds, mine))
    return out


def finished_units(strategies: list[dict], seeds: list[int]) -> dict[tuple, dict]:
    """The finished (ok or diverged) records of a previous comparison, by (strategy, seed).

    ``strategies`` is the previous results.json ``strategies`` list, written
    with the same seeds (its fingerprint says so): single-seed entries are
    records of ``seeds[0]``; multi-seed entries hold theirs in ``per_seed``.
    """
    done: dict[tuple, dict] = {}
    for entry in strategies:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name")
        if isinstance(entry.get("per_seed"), list):
            for rec in entry["per_seed"]:
                if isinstance(rec, dict) and rec.get("status") in _FINISHED:
                    seed = rec.get("seed")
                    if seed in seeds:
                        done[(name, seed)] = {k: v for k, v in rec.items() if k != "seed"}
        elif entry.get("status") in _FINISHED and len(seeds) == 1:
            done[(name, seeds[0])] = entry
    return done


# Keys a comparison adds to the assessment it starts from; the rest is the assessment.
RUN_KEYS = ("kind", "compare_config", "strategies", "comparison_recommendation", "environment")


def read_previous(out: Path) -> dict | None:
    """The comparison in ``out`` that ``--resume`` continues, or None when there is none."""
    path = out / "results.json"
    if not path.exists():
        return None
    previous = load_results(path)
    if previous.get("kind") != "compare":
        raise UsageError(
            Arg("resume"), f": {path} is not a comparison (kind {previous.get('kind')!r})."
        )
    return previous


def finished(previous: dict, fingerprint: dict, path: Path, seeds: list[int]) -> dict:
    """The previous run's finished (strategy, seed) records, once its settings are ours."""
    if previous.get("compare_config", {}).get("fingerprint") != fingerprint:
        raise UsageError(
            Arg("resume"), f": {path} was written with different settings (model, data, epochs, "
            "LR, seed or seeds); use another ", Arg("out"), " or drop ", Arg("resume"),
            " to start afresh.",
        )  # fmt: skip
    return finished_units(previous.get("strategies", []), seeds)


def resumed_text(records: dict, seeds: int) -> str:
    """The warning line that says which finished runs a resumed comparison kept."""
    names = sorted({name for name, _ in records})
    if seeds == 1:
        return f"Resumed: kept finished strategies {', '.join(names)}."
    kept = [f"{n} ({sum(k[0] == n for k in records)} of {seeds} seeds)" for n in names]
    return f"Resumed: kept finished runs of {', '.join(kept)}."
