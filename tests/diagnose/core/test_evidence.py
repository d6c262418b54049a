"""The decisions' typed evidence: what assess hands them equals what its results.json holds."""

from __future__ import annotations

import diagnose.workflows.assessment as assessment
from diagnose.core import Evidence, LayerResult
from diagnose.decide import recommend


def test_assess_decides_on_the_evidence_its_results_hold(loaded_demo, monkeypatch):
    seen = []
    real = assessment.recommend

    def spy(evidence, **kwargs):
        seen.append(evidence)
        return real(evidence, **kwargs)

    monkeypatch.setattr(assessment, "recommend", spy)
    res = assessment.assess(
        loaded_demo, "demo:digits", "demo:digits-noise", max_samples=200, n_permutations=20,
        progress=False, trial_budget=0,
    )  # fmt: skip
    (typed,) = seen
    assert isinstance(typed, Evidence) and all(isinstance(x, LayerResult) for x in typed.layers)
    results = res.to_dict()
    assert typed == Evidence.of(results)
    assert typed.target_labelled > 0 and typed.suggested_lr is not None
    # The public entry point reads the same dict the same way.
    assert recommend(results) == recommend(typed)


def test_evidence_of_a_sparse_results_dict():
    ev = Evidence.of({"target": {"classes": ["a", "b"], "n_used": 10}, "layers": [{"name": "x"}]})
    assert ev.per_class == 5.0 and ev.suggested_lr is None and ev.source_classes is None
    assert [layer.name for layer in ev.layers] == ["x"]
    assert Evidence.of({}).per_class == 0.0
