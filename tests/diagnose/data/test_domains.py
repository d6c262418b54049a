"""Tests of diagnose.data.domains: demo domains, ImageFolder, module:function datasets."""

from __future__ import annotations

import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diagnose.data.demo_data import DEMO_DOMAINS, demo_arrays
from diagnose.data.domains import Domain, load_domain
from diagnose.data.splits import subsample
from probes import UnreadableExample, fetch_items

SHIFTED = ["demo:digits-noise", "demo:digits-invert", "demo:digits-rotate", "demo:digits-relabel"]


# ---------------------------------------------------------------- demo domains


@pytest.mark.parametrize("spec", list(DEMO_DOMAINS))
def test_demo_domain_shapes_ranges_labels(spec):
    d = load_domain(spec)
    x = d.dataset.images
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 32, 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert d.channels == 1 and d.native_size == (32, 32) and d.size_range == ((32, 32), (32, 32))
    assert d.labels.dtype == np.int64 and d.labels.shape == (len(d),)
    assert len(d.classes) == 10 and set(np.unique(d.labels)) == set(range(10))
    img, label = d.dataset[5]
    assert torch.equal(img, x[5]) and label == int(d.labels[5]) and isinstance(label, int)
    if spec != "demo:digits-relabel":
        assert d.classes == [str(i) for i in range(10)]
    s = d.summary()
    assert s["n"] == len(d) == sum(s["class_counts"]) and s["native_size"] == [32, 32]


def test_demo_halves_disjoint_and_cover_the_digits():
    from sklearn.datasets import load_digits

    arrays = demo_arrays()
    src = arrays["demo:digits"][3]
    y = load_digits().target
    for spec in SHIFTED:
        tgt = arrays[spec][3]
        assert len(np.intersect1d(src, tgt)) == 0
        assert len(src) + len(tgt) == 1797
    # Stratified halves: every digit split within one image.
    counts_src = np.bincount(y[src], minlength=10)
    counts_all = np.bincount(y, minlength=10)
    assert np.all(np.abs(2 * counts_src - counts_all) <= 1)
    # The source images are the digits themselves, scaled to [0, 1] and upsampled.
    raw = torch.from_numpy(load_digits().images[src[:4]].astype(np.float32) / 16).unsqueeze(1)
    up = F.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(arrays["demo:digits"][0][:4], up.clamp(0, 1))


def test_demo_shifts_relate_to_the_base_target():
    base = load_domain("demo:digits-relabel").dataset.images  # the unchanged target half
    inv = load_domain("demo:digits-invert")
    torch.testing.assert_close(inv.dataset.images, 1.0 - base)
    rot = load_domain("demo:digits-rotate").dataset.images
    torch.testing.assert_close(rot, base.flip(2).flip(3))
    noise = load_domain("demo:digits-noise").dataset.images
    diff = (noise - base).abs().mean()
    assert 0.05 < float(diff) < 0.3  # a clear change that leaves the digit in place
    # The blurred, noisy image still correlates with its clean version.
    corr = np.corrcoef(noise.flatten(1).numpy()[0], base.flatten(1).numpy()[0])[0, 1]
    assert 0.7 < corr < 0.99
    # Same digit labels for the input-level shifts.
    np.testing.assert_array_equal(inv.labels, load_domain("demo:digits-noise").labels)


def test_demo_relabel_is_balanced_pairs_by_stroke_weight():
    from sklearn.datasets import load_digits

    d = load_domain("demo:digits-relabel")
    counts = np.bincount(d.labels, minlength=10)
    assert counts.min() >= 0.9 * len(d) / 10 and counts.max() <= 1.1 * len(d) / 10
    digits = load_digits()
    tgt = demo_arrays()["demo:digits-relabel"][3]
    y, ink = digits.target[tgt], digits.images[tgt].sum(axis=(1, 2))
    for label, name in enumerate(d.classes):
        pair, weight = name.split("-")
        a, b = (int(v) for v in pair.split("|"))
        members = d.labels == label
        assert set(np.unique(y[members])) == {a, b}
        # Heavy members of a digit carry at least as much ink as its light ones.
        for digit in (a, b):
            other = d.labels == (label ^ 1)
            mine = ink[members & (y == digit)]
            theirs = ink[other & (y == digit)]
            if weight == "heavy":
                assert mine.min() >= theirs.max()
    assert "stroke weight" in d.description


def test_demo_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown demo domain 'demo:nope'.*demo:digits-rotate"):
        load_domain("demo:nope")


def test_demo_batches_match_the_items():
    d = load_domain("demo:digits-noise")
    picks = [5, 0, 17, 5, 300]
    got = fetch_items(d.dataset, picks)
    assert [y for _, y in got] == [int(d.labels[i]) for i in picks]
    assert all(torch.equal(x, d.dataset[i][0]) for (x, _), i in zip(got, picks))


# ---------------------------------------------------------------- splits


def test_splits_disjoint_cover_stratified_deterministic():
    d = load_domain("demo:digits")
    s = d.splits(seed=3)
    all_idx = np.concatenate([s["train"], s["val"], s["test"]])
    assert len(all_idx) == len(d) and len(np.unique(all_idx)) == len(d)
    for c in range(10):
        n_c = int((d.labels == c).sum())
        for part, f in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(int((d.labels[s[part]] == c).sum()) - f * n_c) <= 1.0
    again = d.splits(seed=3)
    for k in s:
        np.testing.assert_array_equal(s[k], again[k])
    assert not np.array_equal(d.splits(seed=4)["test"], s["test"])


def _toy_domain(labels):
    labels = np.asarray(labels, dtype=np.int64)
    images = torch.zeros(len(labels), 1, 2, 2)
    from diagnose.data.demo_data import TensorImageDataset

    return Domain(
        name="toy",
        dataset=TensorImageDataset(images, labels, None),
        labels=labels,
        classes=["a", "b", "c"],
        channels=1,
        native_size=(2, 2),
        size_range=((2, 2), (2, 2)),
        description="toy",
    )


def test_splits_small_class_goes_to_train_with_warning():
    d = _toy_domain([0] * 10 + [1] * 10 + [2] * 2)
    # Said when the domain is made, with the loading problems every workflow reports.
    assert [w for w in d.warnings if "too few items" in w] == [
        "1 class(es) of toy have too few items to split and were put in train only: c"
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not again at each split
        s = d.splits(seed=0, fractions=(0.5, 0.25, 0.25))
    assert set(np.flatnonzero(d.labels == 2)) <= set(s["train"])
    assert len(np.concatenate(list(s.values()))) == 22
    # Two splits need two items: that class is split after all.
    assert set(np.flatnonzero(d.labels == 2)) & set(
        d.splits(seed=0, fractions=(0.5, 0.5, 0))["val"]
    )


def test_splits_unlabelled_and_bad_fractions():
    d = _toy_domain([0] * 10)
    d.labels = None
    s = d.splits(seed=1, fractions=(0.8, 0.0, 0.2))
    assert len(s["val"]) == 0 and len(s["train"]) == 8 and len(s["test"]) == 2
    with pytest.raises(ValueError, match="must sum to 1"):
        d.splits(fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="three non-negative numbers"):
        d.splits(fractions=(0.5, 0.5))


# ---------------------------------------------------------------- ImageFolder


def _png(path, mode, size, value=128):
    w, h = size
    if mode == "RGB":
        arr = np.zeros((h, w, 3), np.uint8)
        arr[..., 0] = value
        Image.fromarray(arr, "RGB").save(path)
    elif mode == "RGBA":
        arr = np.full((h, w, 4), value, np.uint8)
        arr[..., 3] = 7  # alpha must be dropped, not composited
        Image.fromarray(arr, "RGBA").save(path)
    else:
        Image.fromarray(np.full((h, w), value, np.uint8), "L").save(path)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "sub").mkdir(parents=True)
    _png(root / "cat" / "a.png", "RGB", (10, 8), value=200)
    _png(root / "cat" / "b.PNG", "L", (10, 8))
    _png(root / "dog" / "c.png", "RGBA", (12, 6), value=50)
    _png(root / "dog" / "sub" / "d.png", "L", (10, 8))
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "dog" / "notes.txt").write_text("hello")
    return root


def test_image_folder_scan(folder):
    d = load_domain(str(folder))
    assert d.classes == ["cat", "dog"]
    assert len(d) == 4 and d.labels.tolist() == [0, 0, 1, 1]
    assert d.channels == 3 and d.native_size is None
    assert d.size_range == ((6, 10), (8, 12))
    assert any("skipped 1 unreadable" in w and "broken.png" in w for w in d.warnings)
    assert any("ignored 1 file" in w and "notes.txt" in w for w in d.warnings)
    x, y = d.dataset[0]  # cat/a.png, red 200
    assert x.shape == (3, 8, 10) and x.dtype == torch.float32 and y == 0
    torch.testing.assert_close(x[0], torch.full((8, 10), 200 / 255))
    assert float(x[1:].abs().max()) == 0.0
    x, _ = d.dataset[1]  # grayscale converted to RGB: three equal channels
    assert x.shape == (3, 8, 10) and torch.equal(x[0], x[2])
    x, y = d.dataset[2]  # RGBA: alpha dropped, colour kept as is
    assert x.shape == (3, 6, 12) and y == 1
    torch.testing.assert_close(x, torch.full((3, 6, 12), 50 / 255))
    assert d.summary()["class_counts"] == [2, 2]


def test_image_folder_all_gray_is_one_channel(tmp_path):
    for cls in ("x", "y"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", "L", (5, 7), value=255 * i)
    d = load_domain(str(tmp_path))
    assert d.channels == 1 and d.native_size == (7, 5)
    assert all("too few items to split" in w for w in d.warnings)  # 2 images a class
    x, _ = d.dataset[1]
    assert x.shape == (1, 7, 5) and float(x.min()) == 1.0


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"'.*missing' does not exist: pass an ImageFolder"):
        load_domain(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"'.*empty' is empty: it needs one sub-folder per class"):
        load_domain(str(empty))
    flat = tmp_path / "flat"
    flat.mkdir()
    _png(flat / "a.png", "L", (4, 4))
    with pytest.raises(ValueError, match=r"holds images but no class sub-folders: move them into"):
        load_domain(str(flat))
    junk = tmp_path / "junk" / "cls"
    junk.mkdir(parents=True)
    (junk / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"has class folders but no readable image"):
        load_domain(str(junk.parent))
    with pytest.raises(ValueError, match=r"does not exist"):
        load_domain("no/such/dir")


# ---------------------------------------------------------------- module:function


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    code = textwrap.dedent(
        """
        import numpy as np
        import torch
        from PIL import Image
        from torch.utils.data import Dataset

        class WithTargets(Dataset):
            classes = ["neg", "pos"]
            def __init__(self):
                self.targets = [0, 1, 1, 0, 1]
            def __len__(self):
                return 5
            def __getitem__(self, i):
                return torch.full((3, 4, 6), 0.1 * i), self.targets[i]

        class NoTargets(Dataset):
            def __len__(self):
                return 3
            def __getitem__(self, i):
                return Image.new("L", (5, 4 + i), color=255), torch.tensor(i)

        class Unlabelled(Dataset):
            def __len__(self):
                return 2
            def __getitem__(self, i):
                return torch.zeros(1, 3, 3, dtype=torch.uint8) + 255

        def with_targets():
            return WithTargets()

        def no_targets():
            return NoTargets()

        def unlabelled():
            return Unlabelled()

        def not_a_dataset():
            return [1, 2, 3]

        def broken():
            raise RuntimeError("disk on fire")

        class Named(Dataset):
            def __len__(self):
                return 6
            def __getitem__(self, i):
                return torch.full((3, 4, 4), 0.1 * i), ["dog", "cat", "eel"][i % 3]

        class Flaky(Dataset):
            def __init__(self, bad):
                self.bad = bad
            def __len__(self):
                return 12
            def __getitem__(self, i):
                if i in self.bad:
                    raise OSError(f"network share hiccup reading item {i}")
                return torch.full((3, 4, 4), 0.05 * i), i % 2

        def named():
            return Named()

        def flaky():
            return Flaky({3, 7})

        def mostly_broken():
            return Flaky(set(range(9)))

        class Rows:  # a Hugging Face datasets.Dataset's shape: not a torch Dataset
            class _Label:
                names = ["ant", "bee"]
            features = {"img": object(), "label": _Label()}
            def __len__(self):
                return 4
            column_reads = 0
            def __getitem__(self, i):
                if i == "label":  # a column, as datasets.Dataset gives it
                    Rows.column_reads += 1
                    return [j % 2 for j in range(4)]
                return {"img": Image.new("RGB", (6, 5), color=(40 * i, 0, 0)), "label": i % 2}

        class Triples(Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                hwc = np.full((5, 7, 3), 10 * i, dtype=np.uint8)  # H x W x C, as OpenCV reads
                return hwc, np.int64(i % 2), f"img{i}.png"

        def rows():
            return Rows()

        def triples():
            return Triples()

        class NoImageKey(Dataset):
            def __len__(self):
                return 2
            def __getitem__(self, i):
                return {"pixels": torch.zeros(3, 4, 4), "label": 0}

        def no_image_key():
            return NoImageKey()

        answer = 42
        """
    )
    name = "h_user_data_mod"
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_callable_spec_with_targets(user_module):
    d = load_domain(f"{user_module}:with_targets")
    assert d.classes == ["neg", "pos"] and d.labels.tolist() == [0, 1, 1, 0, 1]
    assert d.channels == 3 and d.native_size == (4, 6)
    x, y = d.dataset[2]
    torch.testing.assert_close(x, torch.full((3, 4, 6), 0.2))
    assert y == 1


def test_callable_spec_iterates_for_labels(user_module):
    d = load_domain(f"{user_module}:no_targets")
    assert d.labels.tolist() == [0, 1, 2] and d.classes == ["0", "1", "2"]
    assert d.channels == 1 and d.native_size is None and d.size_range == ((4, 5), (6, 5))
    x, y = d.dataset[1]
    assert x.shape == (1, 5, 5) and float(x.min()) == 1.0 and y == 1


def test_callable_spec_unlabelled(user_module):
    d = load_domain(f"{user_module}:unlabelled")
    assert d.labels is None and d.classes is None
    x, y = d.dataset[0]
    assert y == -1 and x.dtype == torch.float32 and float(x.max()) == 1.0
    assert len(np.concatenate(list(d.splits().values()))) == 2


def test_callable_spec_errors(user_module):
    with pytest.raises(
        ValueError, match=r"could not import module 'no_such_mod_xyz'.*current directory"
    ):
        load_domain("no_such_mod_xyz:f")
    with pytest.raises(ValueError, match=rf"module '{user_module}' has no function 'nope'"):
        load_domain(f"{user_module}:nope")
    with pytest.raises(ValueError, match=r"returned a list, not a torch.utils.data.Dataset"):
        load_domain(f"{user_module}:not_a_dataset")
    with pytest.raises(ValueError, match=r"raised RuntimeError: disk on fire"):
        load_domain(f"{user_module}:broken")
    with pytest.raises(ValueError, match=r"is a int, not a function"):
        load_domain(f"{user_module}:answer")


def test_string_labels_become_sorted_class_indices(user_module):
    d = load_domain(f"{user_module}:named")
    assert d.classes == ["cat", "dog", "eel"]  # sorted names
    assert d.labels.tolist() == [1, 0, 2, 1, 0, 2]
    assert [d.dataset[i][1] for i in range(3)] == [1, 0, 2]


def test_items_that_raise_are_skipped_and_counted(user_module):
    d = load_domain(f"{user_module}:flaky")
    assert d.labels.tolist() == [0, 1, 0, -1, 0, 1, 0, -1, 0, 1, 0, 1]  # unread: unlabelled
    note = next(w for w in d.warnings if "raised an error" in w)
    assert "2 of 12 items" in note and "OSError: network share hiccup reading item 3" in note
    with pytest.raises(UnreadableExample, match="item 3 could not be read"):
        d.dataset[3]  # the readers skip it and count it
    # Never drawn or split again: a second read would fail again and be reported twice,
    # and its label -1 is not a class (no "too few items" warning for it).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = d.splits(seed=0)
    assert sorted(np.concatenate(list(split.values())).tolist()) == [
        i for i in range(12) if i not in (3, 7)
    ]
    assert 3 not in subsample(d, None, seed=0) and 7 not in subsample(d, None, seed=0)
    assert not {3, 7} & set(subsample(d, 5, seed=0).tolist())
    assert d.unreadable == {3, 7}
    with pytest.raises(ValueError, match=r"9 of the 12 items read raised an error, too many"):
        load_domain(f"{user_module}:mostly_broken")


def test_an_unlabelled_domain_never_splits_or_draws_its_unreadable_items():
    d = Domain("unlabelled", list(range(10)), None, None, 1, (4, 4), ((4, 4), (4, 4)), "x",
               unreadable=frozenset({2, 5}))  # fmt: skip
    assert d.readable().tolist() == [0, 1, 3, 4, 6, 7, 8, 9]
    split = d.splits(seed=0)
    assert sorted(np.concatenate(list(split.values())).tolist()) == d.readable().tolist()
    assert subsample(d, None, seed=0).tolist() == d.readable().tolist()
    assert not {2, 5} & set(subsample(d, 4, seed=1).tolist())


def test_dict_items_and_a_hugging_face_shaped_dataset(user_module):
    d = load_domain(f"{user_module}:rows")
    assert d.labels.tolist() == [0, 1, 0, 1]
    # The labels come from the label column, not from decoding every image.
    assert sys.modules[user_module].Rows.column_reads == 1
    assert d.classes == ["ant", "bee"]  # from features["label"].names
    x, y = d.dataset[3]
    assert x.shape == (3, 5, 6) and y == 1
    torch.testing.assert_close(x[0, 0, 0], torch.tensor(120 / 255))
    assert any("'img' is read as the image and 'label' as the label" in w for w in d.warnings)
    with pytest.raises(
        ValueError, match=r"needs its image under one of image, img.*keys are pixels"
    ):
        load_domain(f"{user_module}:no_image_key")


def test_items_with_extras_and_channels_last_arrays(user_module):
    d = load_domain(f"{user_module}:triples")
    assert d.labels.tolist() == [0, 1, 0, 1] and d.native_size == (5, 7) and d.channels == 3
    x, y = d.dataset[2]
    assert x.shape == (3, 5, 7) and y == 0
    torch.testing.assert_close(x, torch.full((3, 5, 7), 20 / 255))
    assert any("items have 3 values: the first two are read" in w for w in d.warnings)
