"""Every file the atomic writer leaves follows the umask (0o666 & ~umask), like any tool's output."""

from __future__ import annotations

import os
import stat

import pytest

from diagnose.core.files import atomic_torch_save, atomic_write_bytes, current_umask
from diagnose.core.schema import SCHEMA_VERSION
from diagnose.report.render import write_outputs

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_results_report_and_cache_files_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    want = 0o666 & ~mask  # 0o644, 0o600, 0o664: what `touch` would give
    results = {"schema": SCHEMA_VERSION, "kind": "demo", "warnings": []}
    results_path, report_path = write_outputs(results, tmp_path / "out")
    assert (_mode(results_path), _mode(report_path)) == (want, want)
    blob = atomic_write_bytes(tmp_path / "blob.bin", b"x")
    atomic_torch_save({"w": 1}, tmp_path / "cache" / "model.pt")
    assert _mode(blob) == want and _mode(tmp_path / "cache" / "model.pt") == want
    # replacing an existing file gives the new file the umask's mode too, and leaves no temp file
    os.chmod(blob, 0o600)
    atomic_write_bytes(blob, b"y")
    assert _mode(blob) == want and blob.read_bytes() == b"y"
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_reading_the_umask_does_not_change_it(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027
    assert os.umask(0o027) == 0o027
