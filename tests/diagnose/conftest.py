"""Shared fixtures: the demo model is pretrained at most once per test session."""

from __future__ import annotations

import os
import signal

import pytest


@pytest.fixture(scope="session")
def demo_cache_dir(tmp_path_factory):
    """The cache directory holding the pretrained demo model (trained here if missing).

    The session's ``DIAGNOSE_CACHE_DIR`` when set (tests/conftest.py sets it),
    so every test module shares one pretraining; a fresh directory otherwise.
    """
    from diagnose.models.demo_cnn import load_or_pretrain

    env = os.environ.get("DIAGNOSE_CACHE_DIR")
    path = env if env else str(tmp_path_factory.mktemp("demo-cache"))
    load_or_pretrain(path, seed=0, progress=False)
    return path


@pytest.fixture(scope="session")
def loaded_demo(demo_cache_dir):
    """``load_model("demo")`` from the session cache (shared: deep-copy before changing it)."""
    from diagnose.models.loading import load_model

    return load_model("demo", cache_dir=demo_cache_dir, progress=False)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (two CPUs) for one test module; skipped where Ray is not installed."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra ('.[ray]')")
    sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    signal.signal(signal.SIGTERM, sigterm)  # ray.init replaced it; later modules expect it
