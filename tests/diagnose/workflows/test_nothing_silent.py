"""Every measurement a user reads as null in results.json has a warning that says why (issue 29).

A walker collects every None in the results of a set of degenerate runs; each one
at a measurement's path must be explained by a warning holding the words listed
for that path. Settings left unset (a model's declared mean, a memory limit) are
not measurements and are not listed.
"""

from __future__ import annotations

import re
import sys

import pytest
import torch
from tiny_models import single_thread
from torch import nn

import diagnose

# path pattern -> words (lower case) that one warning must all contain
EXPLAINED = [
    (r"\.layers\[\d+\]\.probe\.source$", ("source probe",)),
    (r"\.layers\[\d+\]\.probe\.target$", ("target",)),
    (r"\.layers\[\d+\]\.gap$", ("gap",)),
    (r"\.layers\[\d+\]\.rgn$", ("gradient norm",)),
    (r"\.normalization_check\.ok$", ("normalisation check",)),
    (r"\.transferability\.(leep|nce)$", ("leep",)),
    (r"\.transferability\.(logme|h_score)$", ("logme",)),
    (r"\.head_accuracy\.\w+$", ("head",)),
    (r"\.history\[\d+\]\.(source_accuracy|source_accuracy_drop)$", ("source", "label")),
    (r"\.history\[\d+\]\.(agreement|forgetting)$", ("diverged",)),
    (r"\.lr_find$", ("lr range test",)),
    (r"\.recommendation\.trials$", ("race",)),
]


def _nones(d, path=""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _nones(v, f"{path}.{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _nones(v, f"{path}[{i}]")
    elif d is None:
        yield path


def _silent(results: dict) -> list[str]:
    # the warnings, and the recommendation's own reason when it is unmeasured
    why = (results.get("recommendation") or {}).get("unmeasured_reason")
    warnings = [w.lower() for w in [*(results.get("warnings") or []), *([why] if why else [])]]
    silent = []
    for path in _nones(results):
        for pattern, words in EXPLAINED:
            if re.search(pattern, path):
                if not any(all(x in w for x in words) for w in warnings):
                    silent.append(f"{path} (no warning with {words})")
                break
    return silent


_MODULE = """
import torch
from torch.utils.data import Dataset

class Unlabelled(Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return (torch.rand(1, 16, 16, generator=g),)


def unlabelled():
    return Unlabelled()
"""


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """``silent_mod:unlabelled``: 40 noise images without labels."""
    folder = tmp_path_factory.mktemp("silent")
    (folder / "silent_mod.py").write_text(_MODULE)
    sys.path.insert(0, str(folder))
    yield "silent_mod:unlabelled"
    sys.path.remove(str(folder))
    sys.modules.pop("silent_mod", None)


def _headless(loaded):
    net = diagnose.models.random_init_copy(loaded.model)
    net.head = nn.Identity()
    return net


@pytest.fixture(scope="module")
def demo():
    return diagnose.load_model("demo", progress=False)


def _assess(model, source, **kw):
    with single_thread():
        return diagnose.assess(
            model, source, "demo:digits-noise", max_samples=60, n_permutations=20,
            progress=False, **kw,
        ).to_dict()  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["no source, no race", "unlabelled source", "headless backbone, no source"],
)
def test_every_null_measurement_of_a_degenerate_assess_is_explained(demo, unlabelled, case):
    if case == "no source, no race":
        res = _assess(demo, None, trial_budget=0)
    elif case == "unlabelled source":
        res = _assess(demo, unlabelled, trial_budget=0)
    else:
        res = _assess(_headless(demo), None, trial_budget=0.02)
    assert list(_nones(res))  # the case is degenerate: something is null
    assert _silent(res) == []


def test_a_label_free_and_diverged_track_is_explained(demo, unlabelled):
    tracker = diagnose.ForgettingTracker(demo, unlabelled, n_images=32)
    model = diagnose.models.random_init_copy(demo.model)
    with single_thread():
        tracker.measure(model, step=1)
        with torch.no_grad():
            model.block1[0].weight.fill_(float("nan"))
        tracker.measure(model, step=2)
    res = tracker.to_dict()
    assert res["history"][1]["diverged"]
    assert _silent(res) == []
