"""Tests of the disk-backed feature store behind ``capture(max_memory=..., store_dir=...)``."""

from __future__ import annotations

import gc
import json
import tempfile

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset, TensorDataset

from probes._size import parse_size
from probes._store import FeatureSink, FeatureStore
from probes.capture import capture

N, BATCH = 37, 8  # a ragged last batch on purpose


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(inplace=True),  # in-place after a hooked layer: the copy must still be right
        nn.Conv2d(3, 5, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    )


LAYERS = ["0", "2", "5"]


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(N, 1, 6, 6, generator=gen), torch.randint(0, 4, (N,), generator=gen)


def unsized_batches():
    """A generator of (x, y) batches: no len(), so N is unknown until the end."""
    x, y = data()
    for i in range(0, N, BATCH):
        yield x[i : i + BATCH], y[i : i + BATCH]


class Stream(IterableDataset):
    def __iter__(self):
        x, y = data()
        return iter(zip(x, y, strict=True))


def run(source, **kw):
    return capture(
        tiny_cnn(), source, LAYERS, batch_size=BATCH, keep_output=True, progress=False, **kw
    )


@pytest.fixture()
def in_memory():
    x, y = data()
    return run(TensorDataset(x, y))


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """Temporary stores go under this test's tmp_path, so leftovers can be counted."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def assert_identical(a, b, labels: bool = True) -> None:
    assert a.layers == b.layers and a.dims == b.dims and a.n == b.n
    for name in a.layers:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]), strict=True)
    np.testing.assert_array_equal(np.asarray(a.output), np.asarray(b.output), strict=True)
    if labels:
        np.testing.assert_array_equal(a.labels, b.labels, strict=True)


@pytest.mark.parametrize(
    "source",
    [
        lambda: TensorDataset(*data()),  # len known: disk from the first batch
        lambda: data()[0],  # a tensor (no labels in the reference: compared below)
        unsized_batches,  # len unknown: spills once the buffer crosses the budget
        Stream,  # an IterableDataset
    ],
    ids=["dataset", "tensor", "generator", "iterable-dataset"],
)
def test_disk_capture_is_bitwise_the_in_memory_capture(source, in_memory) -> None:
    disk = run(source(), max_memory=1)
    assert disk.storage == "disk" and in_memory.storage == "memory"
    assert all(isinstance(disk[n], np.memmap) for n in disk.layers)
    assert isinstance(disk.output, np.memmap)
    assert not disk[LAYERS[0]].flags.writeable
    assert_identical(disk, in_memory, labels=disk.labels is not None)
    disk.close()


@pytest.mark.parametrize("budget_batches", [1.5, 3.2])
def test_unknown_length_spills_mid_capture_and_stays_identical(budget_batches, in_memory) -> None:
    row_bytes = 4 * (3 + 5 + 4 + 4)  # layers 0, 2, 5 and the output
    budget = int(budget_batches * BATCH * row_bytes)
    disk = run(unsized_batches(), max_memory=budget)
    assert disk.storage == "disk"
    assert_identical(disk, in_memory)
    assert disk.to_dict()["bytes"] == N * row_bytes
    roomy = run(unsized_batches(), max_memory=N * row_bytes)  # exactly fits: stays in memory
    assert roomy.storage == "memory" and "store_dir" not in roomy.to_dict()
    assert_identical(roomy, in_memory)


def test_known_length_goes_to_disk_at_the_first_batch() -> None:
    """With n_rows known, the estimate N x row bytes decides after one batch."""
    sink = FeatureSink(max_memory=1000, store_dir=None, n_rows=100)
    sink.add({"a": [torch.ones(4, 3)]})  # 48 bytes now, 1200 projected
    assert sink.store is not None and sink.memory == {}
    sink.add({"a": [torch.zeros(4, 3)]})
    assert sink.memory == {}  # the disk path keeps no Python-level buffer
    arrays, store = sink.finish(["a"])
    np.testing.assert_array_equal(arrays["a"], np.r_[np.ones((4, 3)), np.zeros((4, 3))])
    store.close()
    small = FeatureSink(max_memory=1000, store_dir=None, n_rows=50)  # 600 projected: fits
    small.add({"a": [torch.ones(4, 3)]})
    assert small.store is None


def test_store_dir_content_is_plain_npy_and_is_kept(tmp_path, in_memory) -> None:
    where = tmp_path / "features"
    x, y = data()
    feats = run(TensorDataset(x, y), store_dir=where)  # store_dir alone means disk
    assert feats.storage == "disk" and feats.store_dir == str(where)
    names = sorted(p.name for p in where.iterdir())
    assert names == ["000-0.npy", "001-2.npy", "002-5.npy", "manifest.json", "output.npy"]
    manifest = json.loads((where / "manifest.json").read_text())
    assert manifest["arrays"]["2"] == {"file": "001-2.npy", "shape": [N, 5], "dtype": "float32"}
    assert manifest["arrays"]["__output__"]["shape"] == [N, 4]
    for name, entry in manifest["arrays"].items():
        loaded = np.load(where / entry["file"])  # an ordinary .npy file
        expected = in_memory.output if name == "__output__" else in_memory[name]
        np.testing.assert_array_equal(loaded, expected, strict=True)
    summary = feats.to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["storage"] == "disk" and summary["store_dir"] == str(where)
    assert summary["bytes"] == N * 4 * (3 + 5 + 4 + 4)
    sub = feats.subset([3, 1])
    assert sub.storage == "memory" and not isinstance(sub["5"], np.memmap)
    np.testing.assert_array_equal(sub["5"], in_memory["5"][[3, 1]])
    feats.close()
    assert (where / "output.npy").exists()  # a given directory belongs to the caller
    with pytest.raises(ValueError, match="must be an empty or new directory.*already holds"):
        run(TensorDataset(x, y), store_dir=where)
    with pytest.raises(ValueError, match="must be a directory.*which is a file"):
        run(TensorDataset(x, y), store_dir=where / "manifest.json")


def test_temporary_store_is_removed_on_close_gc_and_failure(private_tmp) -> None:
    x, y = data()
    feats = run(TensorDataset(x, y), max_memory=1)
    path = feats.store_dir
    assert path.startswith(str(private_tmp)) and len(list(private_tmp.iterdir())) == 1
    first = np.array(feats["5"])
    feats.close()
    assert list(private_tmp.iterdir()) == []
    with run(TensorDataset(x, y), max_memory=1) as again:
        np.testing.assert_array_equal(again["5"], first)
    assert list(private_tmp.iterdir()) == []
    run(TensorDataset(x, y), max_memory=1)  # dropped at once: garbage-collected
    gc.collect()
    assert list(private_tmp.iterdir()) == []

    def failing():
        yield from list(unsized_batches())[:3]
        raise RuntimeError("the data source broke")

    with pytest.raises(RuntimeError, match="the data source broke"):
        run(failing(), max_memory=1)
    assert list(private_tmp.iterdir()) == []


def test_width_change_between_batches_is_the_same_error_on_disk() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Identity())
    batches = [torch.zeros(4, 1, 2, 2), torch.zeros(4, 1, 3, 3)]
    for kw in ({}, {"max_memory": 1}):
        with pytest.raises(ValueError, match=r"Layer '0' gave different dimensions .*\[4, 9\]"):
            capture(model, iter(batches), ["0"], progress=False, **kw)


def test_store_append_and_finish_directly(tmp_path) -> None:
    store = FeatureStore(tmp_path / "s")
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(k, 6)).astype(np.float32) for k in (5, 1, 9)]
    for b in blocks:
        store.append("layer/with odd:chars", b)
    arrays = store.finish()
    assert [p.name for p in sorted((tmp_path / "s").glob("*.npy"))] == [
        "000-layer_with_odd_chars.npy"
    ]
    np.testing.assert_array_equal(arrays["layer/with odd:chars"], np.concatenate(blocks))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("123", 123),
        (4096, 4096),
        ("2GB", 2 * 10**9),
        ("2gb", 2 * 10**9),
        ("500 MB", 500 * 10**6),
        ("1.5KiB", 1536),
        ("512MiB", 512 * 2**20),
        ("3GiB", 3 * 2**30),
        ("2G", 2 * 2**30),
        ("64k", 64 * 1024),
        ("10B", 10),
        (".5KB", 500),
    ],
)
def test_parse_size_good_values(text, expected) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "2XB", "-1GB", "1e9", "0", "0.1B", True, 2.5, None])
def test_parse_size_bad_values(bad) -> None:
    with pytest.raises(ValueError, match="'max_memory' parameter must be"):
        parse_size(bad)


def test_capture_rejects_a_bad_budget() -> None:
    with pytest.raises(ValueError, match=r"'max_memory' parameter .* e\.g\. 2GB.*Got 'lots'"):
        run(TensorDataset(*data()), max_memory="lots")
