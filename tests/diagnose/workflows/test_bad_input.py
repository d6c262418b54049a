"""Bad input end to end: every case is one line on stderr (exit 2) or a warning (exit 0).

Each test drives ``diagnose.cli.main`` in-process on tiny generated data and
checks what the user sees: the exit code, exactly one ``diagnose: error:``
line that names the input and the fix, no traceback, and no results file
left behind by a run that failed before measuring.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from diagnose.cli import main

# One layer keeps each full run to a few seconds; the demo model is session-cached.
FAST = ["--max-samples", "60", "--layers", "block4", "--quiet", "--trial-budget", "0"]


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error_line(code, err) -> str:
    """The single ``diagnose: error:`` line of a bad-input run (asserting there is one)."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diagnose: error: "), err
    return lines[0]


def _argparse_error(argv, capsys) -> str:
    """The one line argparse prints (``diagnose: error: compare: ...``)."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"diagnose: error: {argv[0]}: "), err
    return lines[0]


def _image(path, size=(32, 32), mode="RGB", value=0):
    """A solid image whose colour depends on ``value`` (so classes are separable), plus noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    rng = np.random.default_rng(value * 1000 + h + w + len(path.name))
    base = np.full((h, w, 4), 40 + 150 * (value % 2), dtype=np.uint8)
    base[..., 0] = 200 - 150 * (value % 2)
    noise = rng.integers(0, 30, size=base.shape, dtype=np.uint8)
    arr = (base + noise).astype(np.uint8)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = arr[..., 0] if channels == 1 else arr[..., :channels]
    Image.fromarray(arr, mode=mode).save(path)
    return path


def _folder(root, n=10, classes=("cat", "dog"), size=(32, 32), mode="RGB"):
    for label, cls in enumerate(classes):
        for i in range(n):
            _image(root / cls / f"{i}.png", size=size, mode=mode, value=label)
    return root


def _module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    return name


def _results(out):
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("good") / "data")


# --- data ------------------------------------------------------------------------------------


def test_missing_path(tmp_path, capsys):
    out = tmp_path / "out"
    missing = tmp_path / "no-such-dir"
    line = _error_line(
        *_run(["assess", "--model", "demo", "--target", missing, "--out", out, *FAST], capsys)[::2]
    )
    assert str(missing) in line and "does not exist" in line and "ImageFolder" in line
    assert not out.exists()


def test_empty_directory(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--target", empty, "--out", out, *FAST], capsys
    )
    line = _error_line(code, err)
    assert str(empty) in line and "is empty" in line and "<class>" in line
    assert not (out / "results.json").exists()


def test_images_without_class_folders(tmp_path, capsys):
    flat = tmp_path / "flat"
    for i in range(3):
        _image(flat / f"{i}.png")
    code, _, err = _run(["assess", "--model", "demo", "--target", flat, *FAST], capsys)
    line = _error_line(code, err)
    assert "no class sub-folders" in line and f"{flat}/<class name>/" in line


def test_class_folder_with_no_images_is_a_warning(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    (data / "empty-class").mkdir()
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--target", data, "--out", out, *FAST], capsys
    )
    assert code == 0, err
    warnings = _results(out)["warnings"]
    assert any("1 class folder(s) hold no readable image: empty-class" in w for w in warnings)


def test_every_class_folder_empty(tmp_path, capsys):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    code, _, err = _run(["assess", "--model", "demo", "--target", data, *FAST], capsys)
    line = _error_line(code, err)
    assert str(data) in line and "no readable image" in line and ".png" in line


def test_corrupt_and_truncated_images_are_skipped(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    (data / "cat" / "garbage.png").write_bytes(b"not a png at all")
    good = (data / "dog" / "0.png").read_bytes()
    (data / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = _image(data / "dog" / "photo.jpg", size=(64, 64), value=1).read_bytes()
    (data / "cat" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--target", data, "--out", out, *FAST], capsys
    )
    assert code == 0, err
    res = _results(out)
    assert any("skipped 3 unreadable image file(s)" in w for w in res["warnings"]), res["warnings"]
    assert res["target"]["n"] == 21  # 20 good PNGs and the intact JPEG


def test_non_image_file_is_ignored(tmp_path, capsys):
    data = _folder(tmp_path / "data")
    (data / "cat" / "notes.txt").write_text("labelled by hand")
    (data / "dog" / ".DS_Store").write_bytes(b"\0\0")
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--target", data, "--out", out, *FAST], capsys
    )
    assert code == 0, err
    res = _results(out)
    assert res["target"]["n"] == 20
    assert any(
        "ignored 1 file(s) without an image extension: cat/notes.txt" in w for w in res["warnings"]
    )


def test_mixed_grayscale_rgba_rgb(tmp_path, capsys):
    data = tmp_path / "data"
    for label, cls in enumerate(("a", "b")):
        for i, mode in enumerate(["L", "RGBA", "RGB"] * 3):
            _image(data / cls / f"{i}.png", mode=mode, value=label)
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--target", data, "--out", out, *FAST], capsys
    )
    assert code == 0, err
    res = _results(out)
    assert res["target"]["channels"] == 3 and res["target"]["n"] == 18
    assert res["layers"][0]["probe"]["target"] is not None


def test_tiny_images_are_upscaled_with_a_warning(tmp_path, capsys):
    data = _folder(tmp_path / "data", size=(2, 2))
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--target", data, "--out", out, *FAST], capsys
    )
    assert code == 0, err
    warnings = _results(out)["warnings"]
    assert any("2x2" in w and "upscaled" in w and "32x32" in w for w in warnings), warnings


def test_huge_image_is_resized_on_load(tmp_path, capsys):
    from diagnose.data.domains import load_domain
    from diagnose.data.imagestats import ImageStats
    from diagnose.data.preprocessing import prepared_dataset
    from diagnose.models.expected_input import resolve_preprocessing

    data = _folder(tmp_path / "data", n=4)
    # Solid colour: a 12-megapixel PNG that is quick to write and decode.
    Image.new("RGB", (4000, 3000), (210, 50, 50)).save(data / "cat" / "huge.png")
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--target", data, "--out", out, *FAST], capsys
    )
    assert code == 0, err
    assert _results(out)["target"]["size_range"] == [[32, 32], [3000, 4000]]
    # Each item is resized before batching: a batch never holds a full-size image.
    from diagnose.models.loading import load_model

    domain = load_domain(str(data))
    prep = resolve_preprocessing(load_model("demo", progress=False), [domain], None, None)
    ds = prepared_dataset(domain, np.arange(len(domain)), prep, ImageStats())
    assert {tuple(ds[i][0].shape) for i in range(len(ds))} == {(1, 32, 32)}


def test_target_with_one_class(tmp_path, capsys):
    data = _folder(tmp_path / "data", classes=("only",))
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--target", data, "--out", out, *FAST], capsys
    )
    line = _error_line(code, err)
    assert str(data) in line and "1 class" in line and "at least 2" in line
    assert not (out / "results.json").exists()


def test_same_source_and_target_is_a_warning(good_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["assess", "--model", "demo", "--source", good_folder, "--target", good_folder]
    code, _, err = _run([*argv, "--out", out, *FAST], capsys)
    assert code == 0, err
    assert any("Source and target are the same data" in w for w in _results(out)["warnings"])


# --- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("resnet-please", ["unknown model spec 'resnet-please'", "torchvision:NAME"]),
        ("torchvision:resnet19", ["unknown torchvision model 'resnet19'", "resnet18"]),
        ("missing-model.pt", ["missing-model.pt", "does not exist"]),
    ],
)
def test_model_spec_that_does_not_exist(spec, fragments, good_folder, capsys):
    code, _, err = _run(["assess", "--model", spec, "--target", good_folder, *FAST], capsys)
    line = _error_line(code, err)
    assert all(f in line for f in fragments), line


@pytest.mark.parametrize(
    "body, fragments",
    [
        ("raise RuntimeError('no GPU driver')", ["calling", "raised RuntimeError: no GPU driver"]),
        ("return {'weights': 1}", ["returned a dict, not a torch.nn.Module"]),
    ],
)
def test_model_function_that_fails(body, fragments, good_folder, tmp_path, monkeypatch, capsys):
    name = _module(tmp_path, monkeypatch, "bad_model_fn", f"def build():\n    {body}\n")
    code, _, err = _run(
        ["assess", "--model", f"{name}:build", "--target", good_folder, *FAST], capsys
    )
    line = _error_line(code, err)
    assert "model spec 'bad_model_fn:build'" in line and all(f in line for f in fragments), line


@pytest.mark.parametrize("workflow", ["compare", "audit"])
def test_a_headless_backbone_points_compare_and_audit_to_assess(
    workflow, good_folder, tmp_path, monkeypatch, capsys
):
    body = (
        "import torch.nn as nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
    )
    name = _module(tmp_path, monkeypatch, "headless_fn", body)
    extra = (
        ["--finetuned", tmp_path / "none.pt", "--source", good_folder]
        if workflow == "audit"
        else []
    )
    argv = [workflow, "--model", f"{name}:build", "--target", good_folder, *extra, "--quiet"]
    line = _error_line(*_run(argv, capsys)[::2])
    assert "none was found: name it with --head" in line and "assess" in line, line


def test_unknown_layer_lists_close_matches(good_folder, capsys):
    argv = ["assess", "--model", "demo", "--target", good_folder, "--layers", "blok4", "--quiet"]
    line = _error_line(*_run(argv, capsys)[::2])
    assert (
        "'blok4'" in line and "Did you mean 'block4'" in line and "Available module names" in line
    )
    argv[argv.index("blok4")] = "block4,block3,block4,block4"
    line = _argparse_error(argv, capsys)
    assert "argument --layers: names a layer more than once: block4 (see --help)" in line


def test_weights_of_the_wrong_architecture(good_folder, tmp_path, capsys):
    path = tmp_path / "mlp.pt"
    torch.save(nn.Sequential(nn.Linear(4, 2)).state_dict(), path)
    argv = ["assess", "--model", "demo", "--weights", path, "--target", good_folder, *FAST]
    line = _error_line(*_run(argv, capsys)[::2])
    assert str(path) in line and "wrong architecture" in line
    assert "missing key(s) (block1.0.weight" in line and "unexpected key(s) (0.weight" in line


def test_pickled_model_needs_trust(good_folder, tmp_path, capsys):
    path = tmp_path / "whole.pt"
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, 2)
    )
    torch.save(model, path)
    line = _error_line(
        *_run(["assess", "--model", path, "--target", good_folder, *FAST[:2], "--quiet"], capsys)[
            ::2
        ]
    )
    assert str(path) in line and "--trust-checkpoint" in line and "state_dict()" in line
    out = tmp_path / "out"
    argv = ["assess", "--model", path, "--trust-checkpoint", "--target", good_folder]
    code, _, err = _run([*argv, "--out", out, "--max-samples", "60", "--quiet"], capsys)
    assert code == 0, err


class _Payload:
    """Unpickling this calls ``open(marker, 'w')``: code that runs on ``torch.load``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("as_weights", [True, False])
def test_malicious_checkpoint_is_never_unpickled(as_weights, good_folder, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "extra": _Payload(marker)}, path)
    assert not marker.exists()
    model = ["demo", "--weights", path] if as_weights else [path]
    line = _error_line(
        *_run(["assess", "--model", *model, "--target", good_folder, *FAST], capsys)[::2]
    )
    assert "unpickling it could run arbitrary code" in line and "--trust-checkpoint" in line
    assert not marker.exists()


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--layers", ",,"], "argument --layers: expected 'auto' or comma-separated layer names"),
        (["--epochs", "0"], "argument --epochs: must be an int >= 1, got '0'"),
        (["--epochs", "1.5"], "argument --epochs: must be an int >= 1, got '1.5'"),
        (["--lr", "-0.1"], "argument --lr: must be a number > 0, got '-0.1'"),
        (["--lr", "inf"], "argument --lr: must be a number > 0, got 'inf'"),
        (["--batch-size", "0"], "argument --batch-size: must be an int >= 1, got '0'"),
    ],
)
def test_invalid_numeric_and_layer_options(extra, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["compare", "--model", "demo", "--target", "demo:digits", "--out", out, *extra]
    line = _argparse_error(argv, capsys)
    assert fragment in line and "(see --help)" in line
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu(good_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["assess", "--model", "demo", "--target", good_folder, "--device", "cuda", "--out", out]
    line = _error_line(*_run([*argv, *FAST], capsys)[::2])
    assert "--device cuda" in line and "use --device cpu" in line
    assert not out.exists()


def test_output_directory_is_a_file(good_folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("keep me")
    line = _error_line(
        *_run(["assess", "--model", "demo", "--target", good_folder, "--out", out, *FAST], capsys)[
            ::2
        ]
    )
    assert str(out) in line and "is a file" in line and "--out" in line
    assert out.read_text() == "keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_output_directory_not_writable(good_folder, tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        argv = ["assess", "--model", "demo", "--target", good_folder, "--out", out]
        line = _error_line(*_run([*argv, *FAST], capsys)[::2])
        assert str(out) in line and "not writable" in line and "--out" in line
        assert not any(out.iterdir())
    finally:
        out.chmod(0o700)


def test_output_directory_not_writable_as_any_user(good_folder, tmp_path, monkeypatch, capsys):
    # The same check, with the permission answer forced: it runs under root too.
    import diagnose.report.render

    monkeypatch.setattr(diagnose.report.render.os, "access", lambda path, mode: False)
    out = tmp_path / "new" / "out"
    argv = ["assess", "--model", "demo", "--target", good_folder, "--out", out]
    line = _error_line(*_run([*argv, *FAST], capsys)[::2])
    assert f"output directory {out} is not writable (its parent {tmp_path} is not writable)" in line
    assert not (tmp_path / "new").exists()


# --- report ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written_results(good_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("assess-out")
    argv = ["assess", "--model", "demo", "--target", good_folder, "--out", out, *FAST]
    assert main([str(a) for a in argv]) == 0
    return json.loads((out / "results.json").read_text())


def test_report_from_a_newer_schema(written_results, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**written_results, "schema": "2.0"}))
    line = _error_line(*_run(["report", path, "--quiet"], capsys)[::2])
    assert str(path) in line and "schema 2.0" in line and "upgrade" in line
    assert not (tmp_path / "report.html").exists()


@pytest.mark.parametrize(
    "drop",
    [
        ["layers"],
        ["recommendation", "transferability", "lr_find"],
        ["target", "model", "preprocessing", "image_stats", "samples", "environment", "warnings"],
    ],
)
def test_report_with_missing_keys_still_renders(drop, written_results, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({k: v for k, v in written_results.items() if k not in drop}))
    code, out, err = _run(["report", path, "--quiet"], capsys)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "report.html")
    assert "<html" in (tmp_path / "report.html").read_text().lower()


# --- models meeting data ---------------------------------------------------------------------

_MNIST_MLP = """
from torch import nn

def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))
"""


def test_model_input_size_does_not_match_images(tmp_path, monkeypatch, capsys):
    data = _folder(tmp_path / "data", mode="L")
    name = _module(tmp_path, monkeypatch, "mnist_mlp", _MNIST_MLP)
    out = tmp_path / "out"
    argv = ["assess", "--model", f"{name}:build", "--target", data, "--out", out, "--quiet"]
    line = _error_line(*_run(argv, capsys)[::2])
    assert "mnist_mlp:build" in line and "3x32x32" in line and "--image-size 28" in line
    assert not (out / "results.json").exists()
    # The suggested fix works.
    code, _, err = _run([*argv, "--image-size", "28"], capsys)
    assert code == 0, err


_NAN_MODEL = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten())
        self.feat = nn.Linear(8 * 15 * 15, 16)
        self.inf = nn.Identity()
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        # NaN for bright images only (one class of the test data), inf for every image.
        bright = x.mean(dim=(1, 2, 3)) > 0.5
        h = self.features(x)
        z = self.feat(torch.where(bright.view(-1, 1), torch.full_like(h, float("nan")), h))
        return self.head(self.inf(z * float("inf")))

def build():
    return Net()
"""


def test_nan_and_inf_features_are_null_with_warnings(tmp_path, monkeypatch, capsys):
    data = _folder(tmp_path / "data")
    name = _module(tmp_path, monkeypatch, "nan_model", _NAN_MODEL)
    out = tmp_path / "out"
    argv = ["assess", "--model", f"{name}:build", "--target", data, "--source", data]
    code, _, err = _run([*argv, "--layers", "feat,inf", "--out", out, "--quiet"], capsys)
    assert code == 0, err
    res = _results(out)
    assert all(row["probe"]["target"] is None and row["gap"] is None for row in res["layers"])
    warnings = " ".join(res["warnings"])
    assert "target probe at feat was skipped: 10 samples have NaN or infinite features" in warnings
    assert "source probe at inf was skipped: 20 samples have NaN or infinite features" in warnings
    assert res["transferability"]["logme"] is None and "LogME was skipped" in warnings
    assert "domain gap at inf was skipped" in warnings


def test_no_network_for_torchvision_weights(good_folder, tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    out = tmp_path / "out"
    argv = ["assess", "--model", "torchvision:resnet18", "--target", good_folder, "--out", out]
    line = _error_line(*_run([*argv, *FAST[:2], "--quiet"], capsys)[::2])
    assert "not in the local torchvision cache" in line and "nothing is downloaded" in line
    assert "--weights PATH" in line and "--weights random" in line
    assert not out.exists()


_FLAKY = """
import torch
from torch.utils.data import Dataset


class Flaky(Dataset):
    '''Digits-like blobs whose items 3 and 11 fail to read, labelled by class name.'''

    def __len__(self):
        return 48

    def __getitem__(self, i):
        if i in (3, 11):
            raise OSError(f"network share hiccup reading item {i}")
        g = torch.Generator().manual_seed(i)
        x = torch.rand(1, 16, 16, generator=g) * 0.3
        c = i % 3
        x[:, 5 * c : 5 * c + 5, :] += 0.7
        return x, ["cross", "bar", "ring"][c]


def flaky():
    return Flaky()
"""


def test_a_user_dataset_with_failing_items_and_string_labels_runs(tmp_path, monkeypatch, capsys):
    """Before: `assess` ended with exit 2 on the first OSError; string labels were refused."""
    (tmp_path / "flaky_mod.py").write_text(_FLAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    code, _, err = _run(
        ["assess", "--model", "demo", "--source", "demo:digits", "--target", "flaky_mod:flaky",
         "--max-samples", 100, "--trial-budget", 0.02, "--out", out],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["target"]["classes"] == ["bar", "cross", "ring"]  # sorted class names
    lines = [w for w in res["warnings"] if "raised an error" in w]
    assert len(lines) == 1 and "2 of 48 items" in lines[0] and "item 3" in lines[0]
    # said once: the failed items are not read again (nor split as a class of label -1)
    assert not [w for w in res["warnings"] if "could not be read" in w or "too few" in w]
    assert sum(res["target"][f"n_{k}"] for k in ("train", "val", "test")) == 46
    assert res["recommendation"]["measured"] is True
