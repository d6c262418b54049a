"""Threads: the library leaves the caller's settings alone; the CLI sets them once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

import diagnose
from diagnose.core import set_threads, thread_summary
from diagnose.core import threads as threads_module


@pytest.fixture
def restored():
    before = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores the BLAS pools on exit
        yield
    torch.set_num_threads(before)
    threads_module._set_by = None


def test_set_threads_sets_torch_and_blas_and_is_recorded(restored) -> None:
    set_threads(1)
    assert torch.get_num_threads() == 1
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert all(n == 1 for n in blas)
    summary = thread_summary()
    assert summary["torch_threads"] == 1 and summary["set_by"] == "--threads 1"
    if blas:
        assert summary["blas_threads"] == 1


def test_none_leaves_every_setting_alone(restored) -> None:
    torch.set_num_threads(1)
    set_threads(None)
    assert torch.get_num_threads() == 1
    assert thread_summary()["set_by"].startswith("the caller")


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_a_bad_count_is_one_line_naming_it(bad) -> None:
    with pytest.raises(ValueError, match="'n' parameter of set_threads .*positive whole number"):
        set_threads(bad)


def test_the_library_keeps_the_callers_thread_count(restored, demo_cache_dir) -> None:
    # A workflow runs at the count in force and leaves it there: nothing sizes it to the load.
    torch.set_num_threads(1)
    res = diagnose.assess(
        "demo", "demo:digits", "demo:digits-noise", max_samples=60, n_permutations=10,
        trial_budget=0, progress=False, device="cpu",
    )  # fmt: skip
    assert torch.get_num_threads() == 1
    assert res.to_dict()["environment"]["threads"]["torch_threads"] == 1


def test_nothing_reads_the_machines_load() -> None:
    import pathlib

    root = pathlib.Path(diagnose.__file__).parent
    readers = [p for p in root.rglob("*.py") if "loadavg" in p.read_text()]
    assert readers == []


def test_cli_threads_flag_is_set_once_and_recorded(tmp_path) -> None:
    code = (
        "import sys, torch; from diagnose.cli_parser import build_parser; "
        "from diagnose.core.threads import set_threads, thread_summary; "
        "a = build_parser().parse_args(sys.argv[1:]); set_threads(a.threads); "
        "print(torch.get_num_threads(), thread_summary()['set_by'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "demo", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout.split(maxsplit=1)  # fmt: skip
    assert out == ["1", "--threads 1\n"]
    bad = subprocess.run(
        [sys.executable, "-m", "diagnose.cli", "demo", "--threads", "0"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode == 2 and "--threads" in bad.stderr
