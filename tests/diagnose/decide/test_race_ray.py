"""The race's trials as Ray tasks give the local race's candidates and scores."""

from __future__ import annotations

import pytest
import torch

from tests.diagnose.tiny_models import single_thread


def _race(loaded_demo, executor):
    from diagnose.workflows.assessment import assess

    # One thread locally, as each Ray task runs: the check never hinges on a reduction order.
    with single_thread():
        res = assess(
            loaded_demo, "demo:digits", "demo:digits-noise", max_samples=60,
            n_permutations=20, progress=False, trial_budget=0.05, executor=executor,
        ).to_dict()  # fmt: skip
    return res["recommendation"]["trials"]


def test_ray_race_matches_the_local_race_on_the_demo(ray_local, loaded_demo):
    local = _race(loaded_demo, "local")
    remote = _race(loaded_demo, "ray")
    assert local["executor"] == "local" and remote["executor"] == "ray"
    assert [c["key"] for c in remote["candidates"]] == [c["key"] for c in local["candidates"]]
    for a, b in zip(local["candidates"], remote["candidates"]):
        assert [r["epochs"] for r in a["rungs"]] == [r["epochs"] for r in b["rungs"]]
        assert [r["flops"] for r in a["rungs"]] == [r["flops"] for r in b["rungs"]]
        for ra, rb in zip(a["rungs"], b["rungs"]):
            # the same trials at the same seed: equal up to float summation order
            assert rb["val_accuracy"] == pytest.approx(ra["val_accuracy"], abs=1e-9)
            if ra["val_loss"] is not None:
                assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-5)
    assert remote["flops_spent"] == local["flops_spent"]  # shared captures charged once
    assert remote["pick"] == local["pick"] and remote["cuts"] == local["cuts"]
    assert torch.get_num_threads() >= 1


def test_executor_errors_name_the_parameter(loaded_demo):
    from diagnose.workflows.assessment import assess

    with pytest.raises(
        ValueError, match="'executor' parameter of assess must be one of 'local', 'ray'"
    ):
        assess(loaded_demo, "demo:digits", "demo:digits-noise", executor="dask")
    with pytest.raises(ValueError, match="'ray_address' needs executor=ray"):
        assess(loaded_demo, "demo:digits", "demo:digits-noise", ray_address="auto")
