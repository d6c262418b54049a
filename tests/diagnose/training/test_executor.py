"""compare on many CPUs/GPUs: Ray tasks, seeds with mean and spread, resume per unit, fallback."""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
from collections import OrderedDict
from dataclasses import replace

import matplotlib.axes
import numpy as np
import pytest
import torch
from tiny_models import single_thread
from torch import nn

import diagnose.workflows
from diagnose.cli import main
from diagnose.decide.select import select_strategy
from diagnose.report.plots_compare import tradeoff_plot
from diagnose.training.config import TrainConfig
from diagnose.training.executor import RAY_MISSING, Job, Unit, execute
from diagnose.training.runner import TargetData, run_strategy
from diagnose.training.seeds import strategy_entry
from diagnose.workflows.comparison import compare

DATA = ("demo:digits", "demo:digits-noise")
TWO = "full_low_lr,scratch"  # the two quickest strategies
SMALL = dict(strategies=TWO, epochs=1, max_samples=200, progress=False, with_assessment=False)
SMALL["lr"] = 0.02


def _run(loaded, **kwargs):
    # One torch thread, as in a Ray task granted one CPU, so the numbers can be compared exactly.
    with single_thread():
        return compare(loaded, *DATA, **{**SMALL, **kwargs})


@pytest.fixture(scope="module")
def local_two(loaded_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return _run(loaded_demo, out=out, save_checkpoints=True), out


@pytest.fixture(scope="module")
def seeded(loaded_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("seeded")
    return _run(loaded_demo, out=out, save_checkpoints=True, seeds=2), out


# Results computed in another process (a Ray worker) may round differently:
# its BLAS runs with another thread count, so float64 sums such as CKA's come
# out in another order (seen: the 16th digit). Float64 eps is 2.2e-16; these
# are O(1) quantities built from sums of a few hundred terms, so 1e-12
# relative (and absolute, for values near 0) leaves a wide margin while any
# real difference (another seed, another strategy) is many orders larger.
F64_REL = 1e-12


def _kind(value) -> type:
    # numpy scalars and tuples in an in-memory result count as their JSON counterparts
    if isinstance(value, (bool, np.bool_)):
        return bool
    if isinstance(value, (int, np.integer)):
        return int
    if isinstance(value, (float, np.floating)):
        return float
    if isinstance(value, (list, tuple)):
        return list
    return type(value)


def _assert_close_results(a, b, path: str = "") -> None:
    """``a`` and ``b`` are the same results: floats within F64_REL, everything else exact.

    Dict keys, list lengths, types, ints, bools, strings and None must match
    exactly; only two floats may differ, by F64_REL relative or absolute.
    """
    where = path or "<root>"
    assert _kind(a) is _kind(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            _assert_close_results(a[key], b[key], f"{path}.{key}" if path else str(key))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_results(x, y, f"{path}[{i}]")
    elif _kind(a) is float:
        a, b = float(a), float(b)
        same = (math.isnan(a) and math.isnan(b)) or math.isclose(
            a, b, rel_tol=F64_REL, abs_tol=F64_REL
        )
        assert same, f"{where}: {a!r} != {b!r} (rel {F64_REL})"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_close_results_helper_is_exact_but_for_floats() -> None:
    _assert_close_results({"a": [1, "x", 0.1 + 0.2]}, {"a": [1, "x", 0.3]})
    for other in (
        {"a": [1, "x", 0.3 + 1e-9]},
        {"a": [2, "x", 0.3]},
        {"a": [1, "y", 0.3]},
        {"a": [1, "x"]},
        {"b": [1, "x", 0.3]},
        {"a": [1.0, "x", 0.3]},
    ):
        with pytest.raises(AssertionError):
            _assert_close_results({"a": [1, "x", 0.3]}, other)


def _same_numbers(a: dict, b: dict, *, other_process: bool = False) -> None:
    """The same run's numbers: bit-for-bit in this process, within F64_REL from another."""
    assert a["name"] == b["name"] and a["status"] == b["status"] == "ok"
    if other_process:
        _assert_close_results(a["target"], b["target"], "target")
        _assert_close_results(a["forgetting"], b["forgetting"], "forgetting")
    else:
        assert a["target"] == b["target"]
        assert a["forgetting"] == b["forgetting"]
    assert a["cost"]["flops"] == b["cost"]["flops"] and a["cost"]["steps"] == b["cost"]["steps"]


def _same_state(path_a, path_b, *, other_process: bool = False) -> None:
    """The same checkpoint: bit-for-bit in this process; from another, float32 tolerance."""
    a, b = torch.load(path_a), torch.load(path_b)
    assert a.keys() == b.keys()
    if not other_process:
        assert all(torch.equal(a[k], b[k]) for k in a)
        return
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        if a[k].is_floating_point():
            # float32 weights (eps 1.2e-7): 1e-6 relative, and 1e-6 absolute
            # scaled to the tensor's largest |value|.
            scale = max(1.0, float(b[k].abs().max())) if b[k].numel() else 1.0
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6 * scale, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k  # integer buffers (num_batches_tracked)


# -- Ray ------------------------------------------------------------------------------------


def test_ray_runs_two_strategies_exactly_like_the_local_run(
    ray_local, loaded_demo, local_two, tmp_path
):
    local, local_out = local_two
    res = _run(loaded_demo, executor="ray", out=tmp_path, save_checkpoints=True)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in saved["strategies"]] == ["full_low_lr", "scratch"]
    assert saved["compare_config"]["executor"] == "ray"
    # Ray ran these in worker processes: the same code and data, but another
    # process, so floats are compared with a float64 tolerance (F64_REL).
    for ours, theirs in zip(saved["strategies"], local.strategies):
        _same_numbers(ours, theirs, other_process=True)
        name = ours["name"]
        assert (tmp_path / "strategies" / f"{name}.json").exists()
        # The task returns the checkpoint's bytes; the driver writes it where a local run would.
        _same_state(
            tmp_path / "checkpoints" / f"{name}.pt",
            local_out / "checkpoints" / f"{name}.pt",
            other_process=True,
        )
    ours, theirs = (r.results["comparison_recommendation"] for r in (res, local))
    keys = ("strategy", "ranking", "val_accuracy", "test_accuracy")
    _assert_close_results({k: ours[k] for k in keys}, {k: theirs[k] for k in keys})
    assert ray_local.is_initialized()  # not ours to shut down


def _tiny_job() -> Job:
    # Only torch classes, so Ray workers can unpickle it without the tests folder on their path.
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            block1=nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU()),
            block2=nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            head=nn.Linear(4, 5),
        )
    )
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 1, 8, 8, generator=g), torch.arange(60) % 3
    data = TargetData(x[:40], y[:40], x[40:50], y[40:50], x[50:], y[50:], num_classes=3)
    config = TrainConfig(epochs=2, batch_size=16, head_lr=0.05)
    return Job(net, "head", ["block1", "block2"], data, None, config, torch.device("cpu"))


def test_a_failing_ray_task_is_that_units_failure_not_a_crash(ray_local):
    units = [Unit("full_low_lr", 3), Unit("no_such_strategy", 3), Unit("full_low_lr", 4)]
    got: dict = {}
    execute(units, job=_tiny_job(), on_done=lambda u, r, w: got.update({u: r}), ray=ray_local)
    assert set(got) == set(units)
    bad = got[Unit("no_such_strategy", 3)]
    assert bad["status"] == "failed" and bad["message"].startswith("ValueError")
    assert "no_such_strategy" in bad["message"]
    assert got[Unit("full_low_lr", 3)]["config"]["seed"] == 3
    # the same units run here give the same numbers
    here: dict = {}
    with single_thread():
        execute(units, job=_tiny_job(), on_done=lambda u, r, w: here.update({u: r}), progress=False)
    for unit in units[::2]:  # Ray workers vs this process: float64 tolerance
        _assert_close_results(got[unit]["target"], here[unit]["target"], "target")
    assert got[units[0]]["target"] != got[units[2]]["target"]  # another seed, another run


class _StandInRay:
    """Just enough of ``ray`` to check the session and cancellation logic without starting it."""

    class exceptions:  # noqa: N801 (mirrors ray.exceptions)
        RayError = RuntimeError

    def __init__(self, running: bool, interrupt_at: int | None = None):
        self.running, self.interrupt_at, self.calls, self.got = running, interrupt_at, [], 0

    def is_initialized(self):
        return self.running

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        self.running = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init replaces it

    def shutdown(self):
        self.calls.append(("shutdown",))
        self.running = False

    def cluster_resources(self):
        return {"CPU": 2.0}

    def put(self, value):
        self.calls.append(("put", type(value).__name__))
        return value

    def remote(self, fn):
        ray = self

        class Task:
            def options(self, **kwargs):
                ray.calls.append(("options", kwargs))
                return self

            def remote(self, job, unit, cuda, want):
                return unit

        return Task()

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        self.got += 1
        if self.got == self.interrupt_at:
            raise KeyboardInterrupt
        if ref.name == "dies":
            raise RuntimeError("worker died")
        return {"name": ref.name, "status": "ok"}, [], None

    def cancel(self, ref, force):
        self.calls.append(("cancel", ref))


def test_ray_session_starts_stops_and_cancels_what_it_owns(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 7)
    units = [Unit("a", 0), Unit("dies", 0), Unit("c", 0)]
    got = {}
    fresh = _StandInRay(running=False)

    def ours(signum, frame):  # the CLI's: SIGTERM stops like Ctrl-C, keeping finished runs
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        execute(units, job=_tiny_job(), on_done=lambda u, r, w: got.update({u: r}), ray=fresh)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
    init = fresh.calls[0]
    assert init[0] == "init" and init[1]["num_cpus"] == 7 and not init[1]["include_dashboard"]
    assert ("options", {"num_cpus": 1}) in fresh.calls and fresh.calls[-1] == ("shutdown",)
    assert sum(c[0] == "put" for c in fresh.calls) == 1  # shared inputs go in once
    assert got[Unit("dies", 0)] == {
        "name": "dies",
        "status": "failed",
        "message": "RuntimeError: worker died",
    }
    # someone else's Ray, interrupted at the second result: the rest is cancelled, Ray kept
    theirs = _StandInRay(running=True, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        execute(units, job=_tiny_job(), on_done=lambda u, r, w: None, ray=theirs)
    assert ("cancel", Unit("c", 0)) in theirs.calls
    assert not any(c[0] in ("init", "shutdown") for c in theirs.calls)
    joined = _StandInRay(running=False)
    execute(units[:1], job=_tiny_job(), on_done=lambda u, r, w: None, ray=joined, address="auto")
    assert joined.calls[0] == (
        "init",
        {"address": "auto", "log_to_driver": False, "logging_level": 30},
    )
    assert joined.calls[-1] == ("shutdown",)


def test_without_ray_it_says_so_once_and_runs_locally(monkeypatch, loaded_demo, local_two):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    res = _run(loaded_demo, executor="ray")
    warnings = res.results["warnings"]
    assert warnings.count(RAY_MISSING) == 1
    assert RAY_MISSING == (
        "ray is not installed (pip install 'transfer-diagnose[ray]'); "
        "running the strategies locally, one after another."
    )
    assert res.results["compare_config"]["executor"] == "local"
    for ours, theirs in zip(res.strategies, local_two[0].strategies):
        _same_numbers(ours, theirs)


# -- seeds ------------------------------------------------------------------------------------

PATHS = [
    ("target", "val_accuracy"),
    ("target", "test_accuracy"),
    ("target", "val_loss"),
    ("forgetting", "source_accuracy_drop"),
    ("forgetting", "agreement"),
    ("cost", "wall_s"),
]


def test_seeds_give_the_mean_and_the_sample_std(seeded, local_two):
    res, out = seeded
    saved = json.loads((out / "results.json").read_text())
    assert saved["compare_config"]["seeds"] == [0, 1]
    assert saved["compare_config"]["fingerprint"]["seeds"] == 2
    for entry, single in zip(saved["strategies"], local_two[0].strategies):
        assert entry["status"] == "ok" and entry["seeds"] == [0, 1]
        per = entry["per_seed"]
        assert [p["seed"] for p in per] == [p["config"]["seed"] for p in per] == [0, 1]
        for group, key in PATHS:
            values = np.array([p[group][key] for p in per], dtype=np.float64)
            assert entry[group][key] == np.mean(values)
            spread = entry["spread"][group][key]
            assert spread["std"] == np.std(values, ddof=1)
            assert (spread["min"], spread["max"], spread["n"]) == (values.min(), values.max(), 2)
        for block, value in entry["forgetting"]["cka"].items():
            assert value == pytest.approx(np.mean([p["forgetting"]["cka"][block] for p in per]))
        mean_cka = [np.mean(list(p["forgetting"]["cka"].values())) for p in per]
        assert entry["spread"]["forgetting"]["mean_cka"]["std"] == pytest.approx(
            np.std(mean_cka, ddof=1)
        )
        # The first seed is the single-seed run; its checkpoint is the one kept.
        first = {k: v for k, v in per[0].items() if k != "seed"}
        _same_numbers(first, single)
        assert entry["curves"] == single["curves"]
        name = entry["name"]
        _same_state(out / "checkpoints" / f"{name}.pt", local_two[1] / "checkpoints" / f"{name}.pt")
    scratch = saved["strategies"][1]["per_seed"]
    assert scratch[0]["target"] != scratch[1]["target"]  # the seeds really differ
    html = (out / "report.html").read_text()
    assert "2 seeds" in html and 'id="per-seed"' in html and " ± " in html


def test_select_reads_the_mean_and_cites_the_spread(seeded):
    res, _ = seeded
    rec = res.results["comparison_recommendation"]
    winner = next(s for s in res.strategies if s["name"] == rec["strategy"])
    assert rec["val_accuracy"] == winner["target"]["val_accuracy"]
    assert rec["val_accuracy_std"] == winner["spread"]["target"]["val_accuracy"]["std"]
    assert rec["seeds"] == 2 and "mean ± std over 2 seeds" in rec["reasons"][0]

    def run(name, mean, std, flops):
        return {
            "name": name,
            "status": "ok",
            "seeds": [0, 1, 2],
            "target": {"val_accuracy": mean},
            "forgetting": {"source_accuracy_drop": 0.0},
            "cost": {"flops": flops},
            "spread": {"target": {"val_accuracy": {"std": std, "n": 3}}},
        }

    close = select_strategy([run("partial", 0.80, 0.05, 1e9), run("full_low_lr", 0.78, 0.01, 1e10)])
    assert close.strategy == "partial" and close.within_spread == ("full_low_lr",)
    text = " ".join(close.reasons)
    assert "within one standard deviation" in text and "0.800 ± 0.050" in text
    assert "0.780 ± 0.010" in text
    far = select_strategy([run("partial", 0.80, 0.01, 1e9), run("full_low_lr", 0.70, 0.02, 1e10)])
    assert far.within_spread == ()
    assert any("exceeds one standard deviation (0.010 and 0.020)" in r for r in far.reasons)


def test_tradeoff_plot_draws_one_std_error_bars(seeded, monkeypatch):
    res, _ = seeded
    bars = []
    real = matplotlib.axes.Axes.errorbar

    def record(self, x, y, yerr=None, **kwargs):
        bars.append((x[0], y[0], yerr[0]))
        return real(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", record)
    _, takeaway = tradeoff_plot(res.results)
    expected = {
        (
            s["cost"]["flops"],
            s["target"]["test_accuracy"],
            s["spread"]["target"]["test_accuracy"]["std"],
        )
        for s in res.strategies
    }
    assert set(bars) == expected
    assert "means over 2 seeds" in takeaway and "standard deviation" in takeaway


def test_resume_runs_only_the_missing_unit(seeded, loaded_demo, tmp_path, monkeypatch):
    _, first = seeded
    out = tmp_path / "run"
    shutil.copytree(first, out)
    saved = json.loads((out / "results.json").read_text())
    scratch = saved["strategies"][1]
    scratch["per_seed"] = scratch["per_seed"][:1]  # as if interrupted before seed 1 finished
    (out / "results.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="different settings"):
        _run(loaded_demo, out=out, resume=True, seeds=3)
    calls = []
    real = run_strategy

    def counted(name, *args, config, **kwargs):
        calls.append((name, config.seed))
        return real(name, *args, config=config, **kwargs)

    res = _run(loaded_demo, out=out, resume=True, seeds=2, runner=counted)
    assert calls == [("scratch", 1)]
    final = json.loads((out / "results.json").read_text())
    before = json.loads((first / "results.json").read_text())
    assert final["strategies"][0] == before["strategies"][0]  # kept as written
    after, orig = final["strategies"][1], before["strategies"][1]
    assert after["per_seed"][0] == orig["per_seed"][0]
    _same_numbers(after["per_seed"][1], orig["per_seed"][1])
    assert after["target"] == orig["target"]
    assert (
        "Resumed: kept finished runs of full_low_lr (2 of 2 seeds), scratch (1 of 2 seeds)."
        in (res.results["warnings"])
    )


def test_a_seed_missing_failed_or_diverged_shows_in_the_status():
    ok = {"name": "p", "status": "ok", "target": {"val_accuracy": 0.5}}
    div = {"name": "p", "status": "diverged", "message": "nan", "diverged": {"step": 3}}
    div["target"] = {"val_accuracy": 0.3}
    bad = {"name": "p", "status": "failed", "message": "boom"}
    part = strategy_entry("p", [0, 1, 2], {0: ok, 2: ok})
    assert part["status"] == "incomplete" and "missing seed 1" in part["message"]
    assert part["seeds"] == [0, 2] and part["target"]["val_accuracy"] == 0.5
    failed = strategy_entry("p", [0, 1], {0: ok, 1: bad})
    assert failed["status"] == "failed" and "seed 1: boom" in failed["message"]
    assert failed["spread"]["target"]["val_accuracy"] == {
        "std": None,
        "min": 0.5,
        "max": 0.5,
        "n": 1,
    }
    diverged = strategy_entry("p", [0, 1], {0: ok, 1: div})
    assert diverged["status"] == "diverged" and diverged["diverged"] == {"step": 3}
    assert diverged["target"]["val_accuracy"] == pytest.approx(0.4)
    assert strategy_entry("p", [7], {7: ok}) is ok  # one seed: the record itself
    assert select_strategy([part, failed]).strategy is None


# -- argument checks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"executor": "dask"},
            r"'executor' parameter of compare must be one of 'local', 'ray'\. Got 'dask'",
        ),
        ({"seeds": 0}, r"'seeds' parameter of compare must be an int >= 1 .* Got 0"),
        ({"seeds": True}, r"'seeds' parameter of compare must be an int >= 1"),
        ({"ray_address": "auto"}, r"'ray_address' needs executor=ray"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        compare("demo", *DATA, **kwargs)
    assert "\n" not in str(err.value)


def test_cli_flags_reach_compare(monkeypatch, tmp_path, capsys):
    seen = {}

    class Fake:
        strategies = [
            {
                "name": "partial",
                "status": "ok",
                "target": {"test_accuracy": 0.8},
                "spread": {"target": {"test_accuracy": {"std": 0.02}}},
            }
        ]
        results = {"comparison_recommendation": {"strategy": "partial"}}
        report_path = tmp_path / "report.html"

    def fake(model, source, target, **kwargs):
        seen.update(kwargs)
        return Fake()

    monkeypatch.setattr(diagnose.workflows, "compare", fake)  # what the CLI calls
    base = ["compare", "--model", "demo", "--target", "demo:digits", "--out", str(tmp_path)]
    flags = ["--seeds", "3", "--executor", "ray", "--ray-address", "ray://head:10001"]
    assert main([*base, *flags]) == 0
    assert (seen["seeds"], seen["executor"], seen["ray_address"]) == (3, "ray", "ray://head:10001")
    assert "0.800 ± 0.020" in capsys.readouterr().err
    assert main(base) == 0
    assert (seen["seeds"], seen["executor"], seen["ray_address"]) == (1, "local", None)
    capsys.readouterr()
    for bad, says in [(["--seeds", "0"], "--seeds"), (["--executor", "dask"], "--executor")]:
        with pytest.raises(SystemExit) as exit_:
            main([*base, *bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err


def test_a_ray_lora_unit_writes_its_adapter_directory_whole(ray_local, tmp_path):
    pytest.importorskip("peft")
    from diagnose.models import adapter_dir_for
    from diagnose.workflows.checkpoint_audit import build_finetuned

    job = _tiny_job()
    job = replace(job, config=replace(job.config, lora_rank=2), checkpoint_dir=tmp_path)
    unit = Unit("lora", 0)
    stale = adapter_dir_for(tmp_path / "lora.pt")
    stale.mkdir()
    (stale / "stale.txt").write_text("an earlier run")
    got: dict = {}
    job = replace(job, first_seed=0)
    execute([unit], job=job, on_done=lambda u, r, w: got.update({u: r}), ray=ray_local)
    assert got[unit]["status"] == "ok", got[unit].get("message")
    assert sorted(p.name for p in stale.iterdir()) == ["README.md", "adapter_config.json",
                                                       "adapter_model.safetensors"]  # fmt: skip
    merged, _ = build_finetuned(job.net, "head", tmp_path / "lora.pt")
    adapted, _ = build_finetuned(job.net, "head", stale)
    x = job.data.x_test
    with torch.no_grad():  # the worker's merged weights and its adapter agree (float32)
        assert torch.allclose(merged(x), adapted(x), atol=1e-5)
