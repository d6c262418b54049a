"""Images that pass the header check but fail to decode, such as a truncated JPEG.

The scan catches a JPEG cut short (no end marker, and it does not decode);
an image that fails later, when it is read, is left out by every reader
(capture's datasets, compare's tensors, audit, thumbnails) and counted in
the warnings. PIL's ``LOAD_TRUNCATED_IMAGES`` is never turned on.
"""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageFile
from tiny_models import single_thread

from diagnose import compare, load_domain
from diagnose.cli import main
from diagnose.data.evalset import materialize, materialize_readable
from diagnose.data.imagefolder import UndecodableImage, scan_image_folder
from diagnose.data.samples import sample_thumbnails
from diagnose.data.splits import drop_positions
from diagnose.models.expected_input import resolve_preprocessing
from probes import UnreadableExample

FAST = ["--max-samples", "60", "--layers", "block4", "--quiet"]


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    arr = np.full((32, 32, 3), 40 + 150 * value, dtype=np.uint8)
    arr = (arr + rng.integers(0, 30, arr.shape, dtype=np.uint8)).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _jpeg(path, value=0, size=96):
    """A noisy JPEG: most of its bytes are entropy-coded data, so half of it opens fine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size + value)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    arr[..., 0] = 40 + 150 * value
    Image.fromarray(arr).save(path, quality=90)
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _folder(root, n=10):
    for value, cls in enumerate(("cat", "dog")):
        for i in range(n):
            _png(root / cls / f"{i}.png", value)
    return root


def _passes_header_check(path) -> bool:
    with Image.open(path) as img:
        img.verify()
    return True


def test_the_scan_skips_a_truncated_jpeg_that_passes_verify(tmp_path):
    data = _folder(tmp_path / "data", n=3)
    _truncate(_jpeg(data / "cat" / "cut.jpg"))
    assert _passes_header_check(data / "cat" / "cut.jpg")  # what the scan checked before
    scan = scan_image_folder(data)
    assert len(scan.paths) == 6
    assert scan.warnings == ["skipped 1 unreadable image file(s): cat/cut.jpg (OSError)"]


def test_a_jpeg_with_bytes_after_its_end_marker_is_kept(tmp_path):
    data = _folder(tmp_path / "data", n=3)
    path = _jpeg(data / "dog" / "trailer.jpg", value=1)
    path.write_bytes(path.read_bytes() + b"camera trailer " * 20)
    domain = load_domain(str(data))
    assert domain.warnings == [] and len(domain) == 7
    assert domain.dataset[domain.dataset.paths.index(str(path))][0].shape == (3, 96, 96)


def test_assess_counts_a_truncated_jpeg_in_each_domain(tmp_path, capsys):
    source, target = _folder(tmp_path / "source"), _folder(tmp_path / "target")
    for root in (source, target):
        _jpeg(root / "dog" / "whole.jpg", value=1)
        _truncate(_jpeg(root / "cat" / "cut.jpg"))
    out = tmp_path / "out"
    argv = ["assess", "--model", "demo", "--source", source, "--target", target, "--out", out]
    argv += ["--trial-budget", "0"]  # the race is tested in test_race.py
    with single_thread():
        code = main([str(a) for a in [*argv, *FAST]])
    err = capsys.readouterr().err
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    for root in (source, target):
        line = f"{root}: skipped 1 unreadable image file(s): cat/cut.jpg (OSError)"
        assert line in res["warnings"], res["warnings"]
    assert res["target"]["n"] == res["source"]["n"] == 21  # 20 PNGs and the whole JPEG
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.fixture
def late_bad(tmp_path):
    """A domain whose JPEG passed the scan and was cut short afterwards (index ``bad``)."""
    data = _folder(tmp_path / "data")
    path = _jpeg(data / "cat" / "late.jpg")
    domain = load_domain(str(data))
    _truncate(path)
    return domain, domain.dataset.paths.index(str(path))


def test_the_dataset_raises_undecodable_image_and_records_it(late_bad):
    domain, bad = late_bad
    with pytest.raises(UndecodableImage) as exc:
        domain.dataset[bad]
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, UnreadableExample)
    assert exc.value.index == bad
    assert exc.value.item.startswith("cat/late.jpg (OSError: image file is truncated")
    assert "could not be decoded" in str(exc.value)
    assert domain.undecodable() == {bad: exc.value.item}
    assert domain.summary()["warnings"] == [
        f"skipped 1 image(s) that could not be decoded: {exc.value.item}"
    ]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_materialize_readable_leaves_the_image_out(late_bad, loaded_demo):
    domain, bad = late_bad
    prep = resolve_preprocessing(loaded_demo, [domain], None, None)
    indices = np.arange(len(domain))
    with pytest.raises(UndecodableImage):
        materialize(domain, indices, prep)
    warnings: list[str] = []
    x, y, skipped = materialize_readable(domain, indices, prep, warnings)
    assert skipped.tolist() == [bad] and len(x) == len(y) == len(domain) - 1
    assert y.tolist() == np.delete(domain.labels, bad).tolist()
    (line,) = warnings
    assert line.startswith(f"{domain.name}: skipped 1 image(s) that could not be decoded: cat/late")


def test_drop_positions_reindexes_the_splits():
    used = np.array([10, 11, 12, 13, 14])
    split = {"train": np.array([0, 2, 4]), "val": np.array([1]), "test": np.array([3])}
    kept, new = drop_positions(used, split, [1, 2])
    assert kept.tolist() == [10, 13, 14]
    assert {k: v.tolist() for k, v in new.items()} == {"train": [0, 2], "val": [], "test": [1]}
    assert drop_positions(used, None, [])[0] is used


def test_compare_skips_an_image_first_met_in_training(late_bad, loaded_demo, tmp_path):
    domain, _ = late_bad
    out = tmp_path / "cmp"
    with single_thread():
        res = compare(
            loaded_demo,
            None,
            domain,
            strategies="feature_extraction,full_low_lr",
            epochs=1,
            lr=0.02,
            with_assessment=False,
            progress=False,
            device="cpu",
            out=out,
        )
    assert [s["status"] for s in res.strategies] == ["ok", "ok"]
    line = next(w for w in res.results["warnings"] if "could not be decoded" in w)
    assert line.startswith(f"{domain.name}: skipped 1 image(s) that could not be decoded: ")
    assert "cat/late.jpg (OSError: image file is truncated" in line
    on_disk = json.loads((out / "results.json").read_text())
    assert line in on_disk["warnings"]


def test_thumbnails_replace_a_pick_that_fails_to_decode(late_bad):
    domain, bad = late_bad
    cats = np.flatnonzero(domain.labels == domain.labels[bad])
    assert len(cats) == 11
    # seed 0 picks the cut JPEG among the 10 cats; the 11th cat takes its place.
    assert bad in np.random.default_rng(0).choice(cats, size=10, replace=False)
    shown = sample_thumbnails({"target": domain}, seed=0, per_class=10)["target"]
    assert [s["label"] for s in shown] == ["cat"] * 10 + ["dog"] * 10
    assert all(s["png"] and "error" not in s for s in shown)
    every = sample_thumbnails({"target": domain}, seed=0, per_class=11)["target"]
    assert len(every) == 20  # the 10 cats that decode and the 10 dogs


def test_a_callable_dataset_with_a_truncated_pil_image(tmp_path, monkeypatch):
    good, bad = _jpeg(tmp_path / "good.jpg"), _jpeg(tmp_path / "bad.jpg", value=1)
    _truncate(bad)
    (tmp_path / "lazy_images.py").write_text(
        textwrap.dedent(
            f"""
            from PIL import Image
            from torch.utils.data import Dataset

            class Lazy(Dataset):
                targets = [0, 1, 0, 1]
                paths = [{str(good)!r}, {str(bad)!r}, {str(good)!r}, {str(good)!r}]

                def __len__(self):
                    return 4

                def __getitem__(self, i):
                    return Image.open(self.paths[i]), self.targets[i]

            def build():
                return Lazy()
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("lazy_images", None)
    domain = load_domain("lazy_images:build")
    assert any("1 item(s) whose image could not be decoded" in w for w in domain.warnings)
    with pytest.raises(UndecodableImage, match="item 1: its image could not be decoded"):
        domain.dataset[1]
    assert list(domain.undecodable()) == [1]
    assert domain.dataset[0][0].shape == (3, 96, 96)


def test_assess_skips_an_image_first_met_in_the_capture(late_bad, loaded_demo):
    from diagnose import assess

    domain, bad = late_bad
    with single_thread():
        res = assess(
            loaded_demo,
            None,
            domain,
            layers=["block4"],
            n_permutations=10,
            progress=False,
            trial_budget=0,
        ).to_dict()
    # Counted, left out of every split, and the run finished.
    assert any("could not be read" in w and "cat/late.jpg" in w for w in res["warnings"])
    assert res["target"]["n_used"] == len(domain) - 1
    assert res["layers"][0]["probe"]["target"]["accuracy"] is not None
