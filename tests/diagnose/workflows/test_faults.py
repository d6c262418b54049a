"""Faults keep results: a full or unwritable disk and a device out of memory."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from diagnose.core import files as files_mod
from diagnose.core import schema as results_mod
from diagnose.core.files import atomic_write_text
from diagnose.core.schema import load_results, write_results
from probes import is_out_of_memory
from probes.capture import capture

OLD = {"schema": results_mod.SCHEMA_VERSION, "kind": "assess", "value": 1.0}
NEW = {"schema": results_mod.SCHEMA_VERSION, "kind": "assess", "value": 2.0}


def _fail_on(monkeypatch, target: str, code: int = errno.ENOSPC) -> None:
    """Make ``os.<target>`` as seen by diagnose.core.files raise OSError(code), as a full disk does."""

    def broken(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files_mod.os, target, broken)


@pytest.mark.parametrize("target", ["fsync", "replace"])
def test_disk_full_keeps_previous_results_and_leaves_no_temp_file(
    tmp_path, monkeypatch, target
) -> None:
    path = tmp_path / "results.json"
    write_results(dict(OLD), path)
    before = path.read_bytes()
    _fail_on(monkeypatch, target)
    with pytest.raises(
        OSError, match=r"cannot write .*results\.json: no space left on device"
    ) as ei:
        write_results(dict(NEW), path)
    message = str(ei.value)
    assert str(path) in message and "\n" not in message and "disk is full" in message
    assert ei.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert load_results(path)["value"] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_disk_full_without_a_previous_file_leaves_nothing(tmp_path, monkeypatch) -> None:
    _fail_on(monkeypatch, "fsync")
    with pytest.raises(OSError, match="no space left on device"):
        atomic_write_text(tmp_path / "report.html", "<html></html>")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_names_path_and_reason(tmp_path, monkeypatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files_mod.tempfile, "mkstemp", denied)
    target = tmp_path / "out" / "results.json"
    with pytest.raises(
        PermissionError, match=r"cannot write .*out.results\.json: permission denied"
    ):
        atomic_write_text(target, "{}")
    missing = tmp_path / "missing" / "results.json"
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="the folder does not exist") as ei:
        atomic_write_text(missing, "{}")
    assert ei.value.errno == errno.ENOENT and str(missing) in str(ei.value)


def test_cli_reports_disk_full_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    from diagnose.cli import main

    path = tmp_path / "results.json"
    path.write_text(json.dumps(OLD), encoding="utf-8")
    before = path.read_bytes()
    _fail_on(monkeypatch, "fsync")
    rc = main(["report", str(path), "--out", str(tmp_path / "report.html")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("diagnose: error: cannot write") and "no space left on device" in err
    assert "report.html" in err and "\n" not in err
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


class _OOMAbove(nn.Module):
    """A tiny conv net whose forward raises CUDA out-of-memory for batches larger than ``limit``."""

    def __init__(self, limit: int = 4, error: type[Exception] | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(5, 3)
        self.limit = limit
        self.error = error or torch.cuda.OutOfMemoryError
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        h = self.relu(self.conv(x))  # the hook on conv has already fired when the error comes
        if x.shape[0] > self.limit:
            raise self.error("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.head(h.mean(dim=(2, 3)))


def test_capture_retries_out_of_memory_batches_in_halves() -> None:
    x = torch.randn(23, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(23) % 3
    model = _OOMAbove(limit=4)
    reference = capture(
        model,
        torch.utils.data.TensorDataset(x, y),
        ["conv", "relu"],
        batch_size=4,
        keep_output=True,
        progress=False,
    )
    assert reference.warnings == []
    model.sizes.clear()
    with pytest.warns(RuntimeWarning, match="ran out of device memory"):
        feats = capture(
            model,
            torch.utils.data.TensorDataset(x, y),
            ["conv", "relu"],
            batch_size=16,
            keep_output=True,
            progress=False,
        )
    # 16 -> 8 -> 4+4 ; the last batch of 7 -> 4 + 3.
    assert model.sizes == [16, 8, 4, 4, 8, 4, 4, 7, 4, 3]
    for layer in ["conv", "relu"]:
        assert feats[layer].shape == (23, 5)
        np.testing.assert_allclose(feats[layer], reference[layer], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(feats.output, reference.output, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(feats.labels, y.numpy())
    assert len(feats.warnings) == 1
    assert "2 of 2 batches ran out of device memory" in feats.warnings[0]
    assert (
        "down to 3 examples" in feats.warnings[0] and "batch_size=4 (not 16)" in feats.warnings[0]
    )
    assert feats.to_dict()["warnings"] == feats.warnings
    assert feats.subset([0, 1]).warnings == feats.warnings


def test_capture_oom_from_a_runtime_error_message_and_giving_up_at_one() -> None:
    x = torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    model = _OOMAbove(limit=2, error=RuntimeError)
    with pytest.warns(RuntimeWarning, match="batch_size=2"):
        feats = capture(model, x, ["conv"], batch_size=6, progress=False)
    assert feats["conv"].shape == (6, 5)
    # Out of memory even for one example: re-raised, not looped forever.
    model = _OOMAbove(limit=0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="out of memory"):
        capture(model, x, ["conv"], batch_size=4, progress=False)
    assert model.sizes == [4, 2, 1]
    # Other errors are never retried.
    model = _OOMAbove(limit=0, error=ValueError)
    with pytest.raises(ValueError, match="out of memory"):
        capture(model, x, ["conv"], batch_size=4, progress=False)
    assert model.sizes == [4]


def test_is_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
