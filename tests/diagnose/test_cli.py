"""The CLI: help, exit codes and one-line errors on stderr."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from diagnose.cli import main


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("sub", ["assess", "compare", "audit", "report", "demo"])
def test_help_for_every_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        main([sub, "--help"])
    assert exc.value.code == 0
    assert "--quiet" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["assess", "--model", "demo", "--target", "/no/such/dir"], "/no/such/dir"),
        (["assess", "--model", "demo", "--target", "demo:nope"], "demo:nope"),
        (
            ["assess", "--model", "nonexistent_pkg_xyz:build", "--target", "demo:digits"],
            "nonexistent_pkg_xyz",
        ),
        (["assess", "--model", "demo"], "--target"),
        (["assess", "--model", "demo", "--target", "demo:digits", "--device", "tpu"], "--device"),
        (
            ["assess", "--model", "demo", "--target", "demo:digits", "--normalize", "abc"],
            "--normalize",
        ),
        (
            ["assess", "--model", "demo", "--target", "demo:digits", "--layers", "block9"],
            "'block4'",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, fragment, capsys):
    code, out, err = _run([*argv, "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("diagnose: error:"), err
    assert fragment in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_argument_validation(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["assess", "--model", "demo", "--target", "demo:digits", "--batch-size", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size" in err[0]


def test_report_of_a_broken_results_file(tmp_path, capsys):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"schema": "7.0", "kind": "assess"}))
    code, _, err = _run(["report", str(bad)], capsys)
    assert code == 2 and "schema 7.0" in err


def test_debug_shows_the_traceback():
    argv = ["assess", "--model", "demo", "--target", "demo:nope", "--quiet"]
    cmd = [sys.executable, "-m", "diagnose.cli", *argv]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    debug = subprocess.run([*cmd, "--debug"], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.count("\n") == 1 and "demo:nope" in plain.stderr
    assert debug.returncode != 0
    assert debug.stderr.startswith("Traceback (most recent call last):")
    assert "load_domain" in debug.stderr  # the frames are there, down to where it failed
    assert debug.stderr.strip().splitlines()[-1].startswith("ValueError:")


def test_console_script_is_installed():
    import os
    import shutil
    import sysconfig

    # Where pip puts console scripts: PATH, this interpreter's scripts dir, the user scheme's.
    dirs = [os.environ.get("PATH", ""), sysconfig.get_path("scripts")]
    dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    script = shutil.which("diagnose", path=os.pathsep.join(dirs))
    assert script is not None, "the 'diagnose' console script is not installed (pip install -e .)"
    proc = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert all(cmd in proc.stdout for cmd in ("assess", "compare", "audit", "report", "demo"))


def test_python_errors_name_parameters_and_the_cli_names_flags(capsys):
    import pytest

    import diagnose
    from diagnose.core import PARAMS, Arg, ParamError, UsageError

    match = r"^The 'epochs' parameter of compare must be an int >= 1\. Got 0\.$"
    with pytest.raises(ParamError, match=match) as err:
        diagnose.compare("demo", "demo:digits", "demo:digits-noise", epochs=0, progress=False)
    assert err.value.in_flag_words() == "--epochs must be an int >= 1. Got 0."
    # The flag checks what the parameter's declaration says, as argparse parses it.
    argv = ["assess", "--model", "demo", "--target", "demo:digits", "--max-forgetting", "2"]
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert err == (
        "diagnose: error: assess: argument --max-forgetting: must be a number in [0, 1], got '2' "
        "(see --help)\n"
    )
    assert PARAMS["max_forgetting"].flag == "--max-forgetting"
    # An error that names a parameter in other words says which words are the parameter.
    cases = [
        ((Arg("resume"), " needs ", Arg("out"), ", the directory"),
         "'resume' needs 'out', the directory", "--resume needs --out, the directory"),
        (("pass ", Arg("weights", "PATH"), " or ", Arg("weights", "random"), "."),
         "pass weights=PATH or weights=random.", "pass --weights PATH or --weights random."),
        (("Pass ", Arg("trust_checkpoint", True), " only if"),
         "Pass trust_checkpoint=True only if", "Pass --trust-checkpoint only if"),
        # Quoted words that are not parameters are left alone, whatever they spell.
        (("dataset path 'out' holds ", Arg("model"), " 'state_dict'"),
         "dataset path 'out' holds 'model' 'state_dict'",
         "dataset path 'out' holds --model 'state_dict'"),
    ]  # fmt: skip
    for parts, python, cli in cases:
        err = UsageError(*parts)
        assert isinstance(err, ValueError) and str(err) == python
        assert err.in_flag_words() == cli
