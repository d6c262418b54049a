"""compare end to end: every strategy's fields, divergence, failures, interruption and resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diagnose.core.names import STRATEGY_NAMES
from diagnose.report import write_outputs
from diagnose.training import run_strategy
from diagnose.workflows.compare_args import parse_strategies
from diagnose.workflows.comparison import compare

SMALL = dict(epochs=1, max_samples=200, progress=False, with_assessment=False, lr=0.02)


@pytest.fixture(scope="module")
def all_strategies(loaded_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    res = compare(
        loaded_demo, "demo:digits", "demo:digits-noise", out=out, save_checkpoints=True, **SMALL
    )
    return res, out


def test_every_strategy_reports_every_field(all_strategies):
    res, out = all_strategies
    data = json.loads((out / "results.json").read_text())
    assert data["kind"] == "compare"
    assert [s["name"] for s in data["strategies"]] == list(STRATEGY_NAMES)
    for s in data["strategies"]:
        assert s["status"] == "ok", (s["name"], s.get("message"))
        assert set(s["config"]) >= {"lr", "frozen", "epochs", "bn"}
        # An accuracy over n images is k / n for a whole k: anything else is not a count.
        for split, acc in (
            ("val", s["target"]["val_accuracy"]),
            ("test", s["target"]["test_accuracy"]),
        ):
            n = data["compare_config"][f"n_{split}"]
            assert 0 <= acc <= 1 and abs(acc * n - round(acc * n)) < 1e-9, (s["name"], split, acc)
        f = s["forgetting"]
        assert {"source_accuracy", "source_accuracy_drop", "agreement", "cka"} <= set(f)
        assert set(f["cka"]) == {"block1", "block2", "block3", "block4"}
        c = s["cost"]
        assert (
            c["wall_s"] > 0
            and c["flops"] > 0
            and c["trainable_params"] > 0
            and c["peak_mem_bytes"] > 0
        )
        assert len(s["curves"]) >= 1
        assert (out / "strategies" / f"{s['name']}.json").exists()
        assert (out / "checkpoints" / f"{s['name']}.pt").exists()
    assert data["comparison_recommendation"]["strategy"] in STRATEGY_NAMES
    assert (out / "report.html").exists()


def test_feature_extraction_forgets_nothing(all_strategies):
    res, _ = all_strategies
    fe = next(s for s in res.strategies if s["name"] == "feature_extraction")
    assert fe["forgetting"]["agreement"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in fe["forgetting"]["cka"].values())
    assert fe["forgetting"]["source_accuracy_drop"] == pytest.approx(0.0, abs=1e-9)
    full = next(s for s in res.strategies if s["name"] == "full_low_lr")
    assert full["cost"]["trainable_params"] > fe["cost"]["trainable_params"]


def test_absurd_lr_diverges_and_the_others_finish(loaded_demo, tmp_path):
    res = compare(
        loaded_demo,
        "demo:digits",
        "demo:digits-noise",
        out=tmp_path,
        strategies="feature_extraction,full_low_lr",
        **{**SMALL, "lr": 1e8},
    )
    status = {s["name"]: s for s in res.strategies}
    assert status["full_low_lr"]["status"] == "diverged"
    d = status["full_low_lr"]["diverged"]
    # Steps are 1-based and within the one epoch run; the LR is the schedule's at that step.
    steps = math.ceil(res.results["compare_config"]["n_train"] / 64)
    assert 1 <= d["step"] <= steps and d["epoch"] == 1 and 0 < d["lr"] <= 1e8
    assert "nan" in d["loss"] or "inf" in d["loss"]
    assert len(res.strategies) == 2


def test_a_failing_strategy_does_not_stop_the_others(loaded_demo, tmp_path):
    real = run_strategy

    def flaky(name, *args, **kwargs):
        if name == "partial":
            raise RuntimeError("boom in partial")
        return real(name, *args, **kwargs)

    res = compare(
        loaded_demo,
        "demo:digits",
        "demo:digits-noise",
        runner=flaky,
        out=tmp_path,
        strategies="feature_extraction,partial,scratch",
        **SMALL,
    )
    by = {s["name"]: s for s in res.strategies}
    assert by["partial"]["status"] == "failed" and "boom in partial" in by["partial"]["message"]
    assert by["feature_extraction"]["status"] == by["scratch"]["status"] == "ok"
    assert "boom in partial" in (tmp_path / "report.html").read_text()


def test_interrupt_keeps_finished_and_resume_runs_only_the_rest(loaded_demo, tmp_path):
    real = run_strategy
    calls = []

    def interrupted(name, *args, **kwargs):
        calls.append(name)
        if name == "scratch":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    kwargs = dict(out=tmp_path, strategies="feature_extraction,partial,scratch", **SMALL)
    with pytest.raises(KeyboardInterrupt):
        compare(loaded_demo, "demo:digits", "demo:digits-noise", runner=interrupted, **kwargs)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in saved["strategies"]] == ["feature_extraction", "partial"]
    assert (tmp_path / "report.html").exists()
    calls.clear()

    def counted(name, *a, **k):
        calls.append(name)
        return real(name, *a, **k)

    res = compare(
        loaded_demo, "demo:digits", "demo:digits-noise", resume=True, runner=counted, **kwargs
    )
    assert calls == ["scratch"]
    assert [s["name"] for s in res.strategies] == ["feature_extraction", "partial", "scratch"]
    assert res.strategies[0] == saved["strategies"][0]


def test_results_json_after_every_unit_report_when_due(loaded_demo, tmp_path, monkeypatch):
    import diagnose.workflows.comparison as comparison

    real, draws, seen = run_strategy, [], []

    def drawing(results, out_dir):
        draws.append([s["name"] for s in results["strategies"]])
        return write_outputs(results, out_dir)

    def reading(name, *args, **kwargs):
        path = tmp_path / "results.json"
        seen.append(
            [s["name"] for s in json.loads(path.read_text())["strategies"]] if path.exists() else []
        )
        return real(name, *args, **kwargs)

    # A drawing that costs more than any unit is redrawn after the first unit and at the end.
    monkeypatch.setattr(comparison, "write_outputs", drawing)
    monkeypatch.setattr(comparison, "_REDRAW_AFTER", 1e9)
    names = "feature_extraction,partial,scratch"
    compare(loaded_demo, "demo:digits", "demo:digits-noise", runner=reading, out=tmp_path,
            strategies=names, **SMALL)  # fmt: skip
    assert seen == [[], ["feature_extraction"], ["feature_extraction", "partial"]]
    assert draws == [["feature_extraction"], names.split(",")]
    assert "scratch" in (tmp_path / "report.html").read_text()


def test_resume_refuses_different_settings(loaded_demo, tmp_path):
    compare(
        loaded_demo,
        "demo:digits",
        "demo:digits-noise",
        out=tmp_path,
        strategies="feature_extraction",
        **SMALL,
    )
    with pytest.raises(ValueError, match="different settings"):
        compare(
            loaded_demo,
            "demo:digits",
            "demo:digits-noise",
            out=tmp_path,
            resume=True,
            strategies="feature_extraction",
            **{**SMALL, "epochs": 2},
        )


def test_lora_settings_count_for_resume_only_where_lora_runs(loaded_demo, tmp_path):
    kw = dict(out=tmp_path, strategies="feature_extraction", unfreeze=1, **SMALL)
    compare(loaded_demo, "demo:digits", "demo:digits-noise", **kw)
    calls = []

    def runner(*args, **kwargs):
        calls.append(args)
        return run_strategy(*args, **kwargs)

    # Another LoRA rank changes nothing for a run without lora: it resumes, training nothing.
    res = compare(loaded_demo, "demo:digits", "demo:digits-noise", resume=True, lora_rank=4,
                  runner=runner, **kw)  # fmt: skip
    assert calls == [] and [s["name"] for s in res.strategies] == ["feature_extraction"]


def test_parse_strategies():
    names = ["lp_ft", "scratch"]
    assert parse_strategies(names) == ["lp_ft", "scratch"] and names == ["lp_ft", "scratch"]
    assert parse_strategies("all") == list(STRATEGY_NAMES)
    assert parse_strategies("scratch,feature_extraction") == ["feature_extraction", "scratch"]
    with pytest.raises(ValueError, match="lp-ft"):
        parse_strategies("lp-ft")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_between_strategies_then_resume(tmp_path, sig):
    """Either signal stops the run with its finished strategies saved; SIGTERM's run is
    then resumed (what resuming reads does not depend on the signal)."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "diagnose.cli",
        "compare",
        "--model",
        "demo",
        "--source",
        "demo:digits",
        "--target",
        "demo:digits-invert",
        "--strategies",
        "feature_extraction,full_low_lr,discriminative,scratch",
        "--epochs",
        "6",
        "--lr",
        "0.02",
        "--out",
        str(out),
        "--quiet",
    ]
    # Six epochs on every image leave several seconds of work after the first strategy
    # finishes, so the signal always lands mid-run, even on a fast machine.
    # A shell that starts jobs in the background (``cmd &``, as CI runners may) starts them
    # with SIGINT ignored, and Python then keeps ignoring it: give the child the default.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "strategies" / "feature_extraction.json").exists():
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.fail(f"compare ended before it could be interrupted: {proc.communicate()[1][-500:]}")
    # The child's signal state when signalled: should it ever exit 0 again, this says
    # whether the signal was blocked, ignored or caught (the SigBlk/SigIgn/SigCgt masks).
    status = Path(f"/proc/{proc.pid}/status")
    lines = status.read_text().splitlines() if status.exists() else []  # Linux only
    masks = [ln for ln in lines if ln.startswith("Sig")]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 130:
        results = out / "results.json"
        runs = json.loads(results.read_text())["strategies"] if results.exists() else []
        statuses = [(s["name"], s["status"], s.get("message")) for s in runs]
        pytest.fail(f"exit {proc.returncode} after {sig!r}; {masks}; {statuses}; {err[-500:]}")
    assert "interrupted" in err
    saved = json.loads((out / "results.json").read_text())
    finished = [s["name"] for s in saved["strategies"]]
    assert "feature_extraction" in finished and len(finished) < 4
    assert (out / "report.html").exists()
    if sig == signal.SIGINT:
        return  # resuming does not depend on which signal stopped the run: SIGTERM's case
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    final = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in final["strategies"]] == [
        "feature_extraction",
        "full_low_lr",
        "discriminative",
        "scratch",
    ]
    assert final["strategies"][0] == saved["strategies"][0]


def test_out_of_memory_retries_the_strategy_at_half_the_batch(loaded_demo, tmp_path):
    real = run_strategy
    sizes = []

    def small_device(name, *args, config, **kwargs):
        sizes.append(config.batch_size)
        if config.batch_size > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(name, *args, config=config, **kwargs)

    res = compare(
        loaded_demo,
        "demo:digits",
        "demo:digits-noise",
        runner=small_device,
        out=tmp_path,
        strategies="full_low_lr",
        batch_size=64,
        **SMALL,
    )
    assert sizes == [64, 32, 16]
    entry = res.strategies[0]
    assert entry["status"] == "ok" and entry["config"]["batch_size"] == 16
    assert sum("ran out of device memory" in w for w in res.to_dict()["warnings"]) == 2


def test_unfreeze_several_depths_runs_partial_once_per_depth(loaded_demo, tmp_path):
    res = compare(
        loaded_demo,
        "demo:digits",
        "demo:digits-noise",
        strategies="feature_extraction,partial",
        unfreeze=[1, 3],
        out=tmp_path,
        **SMALL,
    )
    rows = {s["name"]: s for s in res.strategies}
    assert list(rows) == ["feature_extraction", "partial@1", "partial@3"]
    blocks = ["block1", "block2", "block3", "block4"]
    assert rows["partial@1"]["config"]["trainable"] == ["block4", "head"]
    assert rows["partial@3"]["config"]["trainable"] == [*blocks[1:], "head"]
    assert rows["partial@3"]["depth"] == 3 and rows["partial@1"]["status"] == "ok"
    assert (tmp_path / "strategies" / "partial@3.json").exists()
    html = (tmp_path / "report.html").read_text()
    assert "partial fine-tuning, last 3" in html
    with pytest.raises(ValueError, match="between 1 and 4"):
        compare(loaded_demo, "demo:digits", "demo:digits-noise", unfreeze=[1, 9], **SMALL)


def test_runner_must_be_a_function(loaded_demo):
    with pytest.raises(TypeError, match="'runner' parameter of compare"):
        compare(loaded_demo, "demo:digits", "demo:digits-noise", runner="run_strategy", **SMALL)


def test_lora_and_bitfit_from_the_cli_then_the_adapter_audited(
    demo_cache_dir, tmp_path, capsys, monkeypatch
):
    pytest.importorskip("peft")
    from diagnose.cli import main

    monkeypatch.setenv("DIAGNOSE_CACHE_DIR", demo_cache_dir)
    out = tmp_path / "cmp"
    args = ["compare", "--model", "demo", "--source", "demo:digits", "--target", "demo:digits-noise",
            "--strategies", "bitfit,lora", "--lora-rank", "4", "--unfreeze", "2", "--epochs", "1",
            "--max-samples", "120", "--lr", "0.02", "--save-checkpoints", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    data = json.loads((out / "results.json").read_text())
    rows = {s["name"]: s for s in data["strategies"]}
    assert set(rows) == {"bitfit", "lora"} and all(s["status"] == "ok" for s in rows.values())
    lora = rows["lora"]["config"]
    assert lora["lora"]["rank"] == 4 and lora["frozen"] == ["block1", "block2"]
    assert (
        rows["lora"]["cost"]["trainable_params"] < rows["bitfit"]["cost"]["trainable_params"] * 50
    )
    assert {p["name"] for p in data["front"]} <= set(rows)
    audit = ["audit", "--model", "demo", "--source", "demo:digits", "--finetuned",
             str(out / "checkpoints" / "lora_adapter"), "--out", str(tmp_path / "aud"), "--quiet"]  # fmt: skip
    assert main(audit) == 0
    audited = json.loads((tmp_path / "aud" / "results.json").read_text())
    assert audited["finetuned"]["format"] == "peft adapter, merged"
    # The audit of the adapter measures what compare measured on the same source images.
    assert audited["source_accuracy"]["finetuned"] == rows["lora"]["forgetting"]["source_accuracy"]


def test_lora_without_peft_is_one_line_naming_the_extra(monkeypatch, capsys):
    import diagnose.workflows.compare_args as compare_args
    from diagnose.cli import main

    monkeypatch.setattr(compare_args, "peft_available", lambda: False)
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    args = ["compare", "--model", "demo", "--target", "demo:digits", "--strategies", "lora"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "diagnose: error: The 'lora' strategy needs the peft library: "
        "pip install 'transfer-diagnose[peft]'."
    )
    warnings: list[str] = []
    assert "lora" not in parse_strategies("all", warnings)
    assert warnings == [
        "lora was left out of 'all': it needs the peft library "
        "(pip install 'transfer-diagnose[peft]')."
    ]
