"""Reproducible: the same inputs and seed on the CPU give the same results.json numbers.

Timings (and what depends on them) differ from run to run by nature; everything
else, every metric, interval and p-value, must be bit-for-bit equal.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys

import pytest

import diagnose
from diagnose.core.schema import jsonable
from diagnose.models import forget_layouts
from diagnose.workflows.comparison import compare

# Keys whose values measure time or memory of this particular run.
TIMING_KEYS = {"wall_s", "timings_s", "environment", "peak_mem_bytes"}


# Wall-clock seconds quoted inside prose (the recommendation's "..., 4.1 s against ...").
SECONDS_IN_TEXT = re.compile(r"\b\d+(?:\.\d+)?(?:e[+-]?\d+)? s\b")


def _is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith("_s") or key.endswith("_per_s")


def _plain(result) -> dict:
    """The results dict exactly as results.json would hold it."""
    return json.loads(json.dumps(jsonable(result.to_dict()), allow_nan=False))


def _differences(a, b, path: str = "") -> list[str]:
    """Every key path where ``a`` and ``b`` differ, timing keys excluded."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if _is_timing(key):
                continue
            where = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                out.append(f"{where}: only in {'first' if key in a else 'second'} run")
            else:
                out.extend(_differences(a[key], b[key], where))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{path}[{i}]")]
    if isinstance(a, str) and isinstance(b, str):
        a, b = SECONDS_IN_TEXT.sub("<t> s", a), SECONDS_IN_TEXT.sub("<t> s", b)
    return [] if a == b and type(a) is type(b) else [f"{path}: {a!r} != {b!r}"]


def _check_environment(results: dict, seed: int) -> None:
    env = results["environment"]
    assert env["seed"] == seed
    assert env["device"] == "cpu"
    for lib in ("python", "torch", "torchvision", "numpy", "scipy", "scikit_learn"):
        assert isinstance(env[lib], str) and env[lib], lib


def test_differences_helper_sees_changes_and_skips_timings() -> None:
    a = {"x": [1.0, {"y": 2}], "wall_s": 1.0, "environment": {"seed": 0}, "t": {"fit_s": 3}}
    b = {"x": [1.0, {"y": 3}], "wall_s": 9.0, "environment": {"seed": 1}, "t": {"fit_s": 4}}
    assert _differences(a, b) == ["x[1].y: 2 != 3"]
    assert _differences({"a": 1}, {"a": 1.0}) == ["a: 1 != 1.0"]
    assert _differences(["1e9 FLOPs, 4.1 s."], ["1e9 FLOPs, 0.2 s."]) == []
    assert _differences(["2e9 FLOPs, 4.1 s."], ["1e9 FLOPs, 4.1 s."]) != []


@contextlib.contextmanager
def _busy_machine(processes: int = 2):
    """Processes spinning on every core while the block runs (a machine under load)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for p in busy:
            p.kill()
            p.wait()


def test_assess_twice_gives_identical_results_with_a_busy_machine_beside_one(
    demo_cache_dir,
) -> None:
    # A small race too: its trials are part of results.json and must repeat exactly.
    kwargs = dict(
        max_samples=200, n_permutations=50, device="cpu", seed=0, progress=False, trial_budget=0.02
    )
    first = _plain(diagnose.assess("demo", "demo:digits", "demo:digits-noise", **kwargs))
    # As a new process: the second run's layouts come from the decisions kept on disk, never
    # from a timing taken while the machine is busy.
    forget_layouts()
    with _busy_machine():
        second = _plain(diagnose.assess("demo", "demo:digits", "demo:digits-noise", **kwargs))
    assert _differences(first, second) == []
    _check_environment(first, seed=0)
    # The comparison is not vacuous: there are layers with probe numbers in it.
    assert "layers" in json.dumps(first)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compare_twice_gives_identical_results(demo_cache_dir) -> None:
    kwargs = dict(
        strategies="feature_extraction,full_low_lr",
        epochs=1,
        max_samples=200,
        with_assessment=False,
        lr=0.02,
        device="cpu",
        seed=3,
        progress=False,
    )
    first = _plain(compare("demo", "demo:digits", "demo:digits-noise", **kwargs))
    second = _plain(compare("demo", "demo:digits", "demo:digits-noise", **kwargs))
    assert _differences(first, second) == []
    _check_environment(first, seed=3)
    assert [s["status"] for s in first["strategies"]] == ["ok", "ok"]
