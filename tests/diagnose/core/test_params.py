"""The declared parameter table: one rule gives the API check, argparse's type and the flag."""

from __future__ import annotations

import argparse
import math

import pytest

from diagnose.cli_parser import build_parser, flags_of
from diagnose.core import PARAMS, Arg, ParamError, check_params


@pytest.mark.parametrize(
    "name, rule",
    [
        ("batch_size", "an int >= 1"),
        ("lr", "a number > 0"),
        ("trial_budget", "a number in [0, 1]"),
        ("pool", "one of 'mean', 'cls'"),
        ("seed", "an int"),
    ],
)
def test_rules_read_as_the_error_says_them(name, rule):
    assert PARAMS[name].rule == rule


@pytest.mark.parametrize(
    "name, good, bad",
    [
        ("batch_size", [1, 64, 3.0], [0, -1, 1.5, True, "8", None, math.inf]),
        ("max_samples", [None, 1, 200], [0, False, math.nan]),
        ("lr", [None, 1e-6, 3.0], [0.0, -0.1, math.inf, math.nan, "0.1"]),
        ("trial_budget", [0, 0.2, 1], [-0.01, 1.01, None, math.nan, True]),
        ("executor", ["local", "ray"], ["dask", None, 1]),
    ],
)
def test_values_inside_and_outside_each_rule(name, good, bad):
    param = PARAMS[name]
    assert all(param.ok(v) for v in good)
    assert not any(param.ok(v) for v in bad)


def test_the_flag_parses_what_the_api_accepts_and_nothing_else():
    for param in PARAMS.values():
        if param.kind == "choice":
            continue
        for text in ("0", "1", "2", "0.5", "-1", "inf", "nan", "x", "1e-3"):
            try:
                value = param.parse(text)
            except argparse.ArgumentTypeError as exc:
                assert f"must be {param.rule}, got {text!r}" == str(exc)
                continue
            assert param.ok(value), (param.name, text)


def test_one_error_form_in_the_api_and_in_flag_words():
    with pytest.raises(ParamError) as err:
        check_params("compare", epochs=0, lr=0.1)
    assert str(err.value) == "The 'epochs' parameter of compare must be an int >= 1. Got 0."
    assert err.value.in_flag_words() == "--epochs must be an int >= 1. Got 0."
    assert isinstance(err.value, ValueError)
    with pytest.raises(KeyError, match="declares no parameter 'epochs'"):
        check_params("assess", epochs=3)  # a table that says what each entry point takes


def test_the_cli_flags_are_the_declared_ones():
    flags = flags_of(build_parser())
    for name in PARAMS:
        assert flags[name] == PARAMS[name].flag, name
    assert flags["trust_checkpoint"] == "--trust-checkpoint"  # undeclared flags are recorded too
    # UsageError's Arg says "--" and the name with dashes: every flag must be that.
    assert all(flag == Arg(name).cli() for name, flag in flags.items()), flags
    assert "weights" not in PARAMS  # a data or spec parameter keeps its own words


def test_errors_cross_process_boundaries_with_their_flag_words():
    import pickle

    from diagnose.core import UsageError

    with pytest.raises(ParamError) as err:
        check_params("compare", epochs=0)
    again = pickle.loads(pickle.dumps(err.value))  # as a Ray task or a spawned worker raises it
    assert str(again) == str(err.value) and again.in_flag_words() == err.value.in_flag_words()
    usage = UsageError("pass ", Arg("out", "DIR"), ".")
    assert pickle.loads(pickle.dumps(usage)).in_flag_words() == "pass --out DIR."
