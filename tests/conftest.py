"""Test-session set-up shared by every test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # One demo-model cache for the whole session, kept between local runs in
    # .pytest_cache (fresh in CI), so the demo CNN is pretrained at most once.
    cache = Path(config.rootpath) / ".pytest_cache" / "demo-model"
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DIAGNOSE_CACHE_DIR", str(cache))
    # torchvision weights are never downloaded in tests: an empty hub dir.
    hub = Path(config.rootpath) / ".pytest_cache" / "torch-home"
    hub.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_HOME", str(hub))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
