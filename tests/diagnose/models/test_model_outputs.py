"""Models whose forward returns the logits wrapped: a dict, a tuple, an object with ``.logits``.

assess and compare take the logits with ``probes.logits_of`` wherever a
model's output is used as logits; a forward with no tensor to take is one
line that says what it returned and what is expected.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from tiny_models import (
    TinyDictNoTensor,
    TinyReturnsDict,
    TinyReturnsObject,
    TinyReturnsString,
    TinyReturnsTuple,
    single_thread,
)

from diagnose import assess, compare
from diagnose.cli import main

WRAPPED = [TinyReturnsDict, TinyReturnsTuple, TinyReturnsObject]
FAST = dict(
    layers=["block2", "block3"], n_permutations=10, progress=False, device="cpu", trial_budget=0
)


@pytest.mark.parametrize("model_cls", WRAPPED, ids=lambda c: c.__name__)
def test_assess_takes_the_logits_of_wrapped_outputs(model_cls):
    torch.manual_seed(0)
    with single_thread():
        res = assess(
            model_cls(classes=10), "demo:digits", "demo:digits-noise", max_samples=40, **FAST
        ).to_dict()
    # LEEP and NCE come from the captured logits, the RGN from a backward through them.
    assert res["transferability"]["leep"] is not None
    assert res["transferability"]["nce"] is not None
    assert all(row["rgn"] is not None for row in res["layers"])
    assert res["recommendation"]["strategy"]
    assert not [w for w in res["warnings"] if "forward returned" in w or "skipped" in w]


@pytest.mark.parametrize(
    ("model_cls", "strategy"),
    [(TinyReturnsDict, "partial"), (TinyReturnsTuple, "full_low_lr"), (TinyReturnsObject, "lp_ft")],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_compare_trains_models_with_wrapped_outputs(model_cls, strategy):
    torch.manual_seed(0)
    with single_thread():
        res = compare(
            model_cls(classes=10),
            "demo:digits",
            "demo:digits-noise",
            strategies=strategy,
            epochs=1,
            max_samples=120,
            lr=0.02,
            with_assessment=False,
            progress=False,
            device="cpu",
        )
    (entry,) = res.strategies
    assert entry["status"] == "ok", entry.get("message")
    assert entry["target"]["test_accuracy"] is not None
    if strategy == "partial":  # the cached-prefix check compares the two forwards' logits
        assert entry["config"]["prefix_cache"] is True, entry["config"]["prefix_cache_reason"]


@pytest.mark.parametrize(
    ("model_cls", "returned"),
    [(TinyReturnsString, "a str"), (TinyDictNoTensor, "a dict with keys [label, score]")],
    ids=["string", "dict-without-tensors"],
)
def test_forward_without_logits_is_one_clear_error(model_cls, returned):
    with single_thread(), pytest.raises(TypeError) as exc:
        assess(model_cls(classes=10), None, "demo:digits", max_samples=40, **FAST)
    message = str(exc.value)
    assert message.startswith(f"the model's forward returned {returned}")
    assert "'logits'" in message and "\n" not in message


def test_cli_error_line_for_a_forward_without_logits(tmp_path, monkeypatch, capsys):
    (tmp_path / "string_model.py").write_text(
        textwrap.dedent(
            """
            from tiny_models import TinyReturnsString

            def build():
                return TinyReturnsString(classes=10)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("string_model", None)
    argv = ["assess", "--model", "string_model:build", "--target", "demo:digits"]
    with single_thread():
        code = main([*argv, "--max-samples", "40", "--layers", "block3", "--quiet"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("diagnose: error: the model's forward returned a str; expected")
