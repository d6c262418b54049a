"""Per-layer measurements: a probe that did not converge is reported, naming the layer."""

from __future__ import annotations

import numpy as np

import probes
from diagnose.measure import layers as layers_module
from diagnose.measure.layers import layer_measurements


def _data(n=120, d=24, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.standard_normal((n, d)).astype(np.float32) + np.eye(3, d, dtype=np.float32)[y]
    split = {"train": np.arange(0, 60), "val": np.arange(60, 90), "test": np.arange(90, n)}
    return x, y, split


def _measure(warnings):
    x, y, split = _data()
    return layer_measurements(
        ["block"], {"block": x}, None, y, split, None, None, None,
        n_permutations=0, seed=0, progress=False, warnings=warnings,
    )  # fmt: skip


def test_a_converged_probe_records_its_iterations_and_warns_nothing():
    warnings: list[str] = []
    rows = _measure(warnings)
    target = rows[0].probe["target"]
    assert target.converged is True and target.n_iter >= 1
    assert not any("converging" in w for w in warnings)


def test_a_probe_stopped_at_its_limit_is_one_warning_naming_the_layer(monkeypatch):
    real = probes.linear_probe
    monkeypatch.setattr(
        layers_module.probes, "linear_probe", lambda *a, **k: real(*a, **k, max_iter=1)
    )
    warnings: list[str] = []
    rows = _measure(warnings)
    assert rows[0].probe["target"].converged is False
    hits = [w for w in warnings if "without converging" in w]
    assert len(hits) == 1 and "target probe at block" in hits[0], warnings
