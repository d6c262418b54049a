"""results.json: plain JSON, null for non-finite numbers, atomic writes, schema checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diagnose.core.schema import SCHEMA_VERSION, jsonable, load_results, write_results


def test_non_finite_numbers_become_null_with_a_warning(tmp_path):
    res = {
        "schema": SCHEMA_VERSION,
        "kind": "assess",
        "a": {"b": float("nan")},
        "c": np.float32(2.5),
        "d": np.arange(3),
        "e": [np.inf],
    }
    path = write_results(res, tmp_path / "results.json")
    data = json.loads(path.read_text())
    assert data["a"]["b"] is None and data["e"] == [None]
    assert data["c"] == 2.5 and data["d"] == [0, 1, 2]
    assert any("a.b" in w for w in data["warnings"])
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_jsonable_uses_to_dict():
    class R:
        def to_dict(self):
            return {"x": np.int64(3)}

    assert jsonable({"r": R()}) == {"r": {"x": 3}}


def test_load_results_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_results(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_results(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="missing 'schema' or 'kind'"):
        load_results(other)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"schema": "99.0", "kind": "assess"}))
    with pytest.raises(ValueError, match="schema 99.0"):
        load_results(newer)
