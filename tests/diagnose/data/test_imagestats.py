"""Image statistics against direct numpy/scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from diagnose.data.imagestats import ImageStats, drift_table, normalization_check


def _record(images):
    rec = ImageStats()
    for i, img in enumerate(images):
        rec.record_size(i, img)
        rec.record_pixels(i, img)
    return rec


def test_moments_match_numpy():
    rng = np.random.default_rng(0)
    imgs = [torch.tensor(rng.random((3, 5, 7)), dtype=torch.float32) for _ in range(6)]
    rec = _record(imgs)
    stack = np.stack([im.numpy().astype(np.float64) for im in imgs])
    np.testing.assert_allclose(rec.channel_mean(), stack.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(rec.channel_std(), stack.std(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(rec.values("brightness"), stack.mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(rec.values("contrast"), stack.std(axis=(1, 2, 3)), rtol=1e-5)
    assert rec.to_dict()["height"]["mean"] == 5 and rec.n == 6
    rec.record_pixels(0, imgs[0])  # a second read of the same item is not counted twice
    assert rec.n == 6


def test_drift_uses_two_sample_ks():
    rng = np.random.default_rng(1)
    a = [torch.full((1, 4, 4), float(v)) for v in rng.random(30) * 0.5]
    b = [torch.full((1, 4, 4), float(v)) for v in rng.random(30) * 0.5 + 0.4]
    rows = {r["statistic"]: r for r in drift_table(_record(a), _record(b))}
    expected = stats.ks_2samp([float(x.mean()) for x in a], [float(x.mean()) for x in b])
    assert rows["brightness"]["ks"] == pytest.approx(expected.statistic)
    assert rows["brightness"]["p_value"] == pytest.approx(expected.pvalue)
    assert rows["height"]["ks"] == 0.0 and rows["height"]["p_value"] == 1.0


def test_normalization_check_flags_inverted_contrast():
    rng = np.random.default_rng(2)
    dark = [torch.tensor(rng.random((1, 8, 8)) * 0.3, dtype=torch.float32) for _ in range(20)]
    inverted = [1 - d for d in dark]
    src = _record(dark)
    ok, warn_ok = normalization_check(
        _record(dark), src.channel_mean(), src.channel_std(), "source"
    )
    assert ok["ok"] and warn_ok == []
    bad, warn_bad = normalization_check(
        _record(inverted), src.channel_mean(), src.channel_std(), "source"
    )
    assert bad["ok"] is False and len(warn_bad) == 1 and "channel 0" in warn_bad[0]


def test_normalization_check_broadcasts_single_channel_expectation():
    imgs = [torch.full((3, 2, 2), 0.5) for _ in range(3)]
    check, warns = normalization_check(_record(imgs), [0.5], [0.25], "weights")
    assert len(check["channels"]) == 3 and check["ok"] is False  # std 0 vs 0.25: ratio 0


def test_per_image_values_are_compact_and_keep_the_first_value_per_index():
    import sys

    from diagnose.data.imagestats import _Column

    col, ref = _Column(), {}
    rng = np.random.default_rng(0)
    for index in rng.integers(0, 5000, 20000):  # repeats and out-of-order indices
        value = float(rng.random())
        col.add(int(index), value)
        ref.setdefault(int(index), value)
    assert len(col) == len(ref)
    np.testing.assert_array_equal(col.values(), np.array(list(ref.values())))
    assert all(col.has(i) == (i in ref) for i in range(6000))

    big = _Column()
    for index in range(1_000_000):
        big.add(index, 0.5)
    # ~8 bytes a value + 1 bit an index (a dict would take ~100 bytes an entry)
    assert sys.getsizeof(big._values) + sys.getsizeof(big._seen) < 12 * 2**20


def _gray_as_rgb(n=12, seed=3, jitter=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gray = torch.tensor(rng.random((1, 6, 6)) * 0.3, dtype=torch.float32)
        rgb = gray.repeat(3, 1, 1)
        rgb[1] += jitter  # a re-encoded grayscale image: channels a hair apart
        out.append(rgb)
    return out


@pytest.mark.parametrize("jitter", [0.0, 0.002])
def test_a_grayscale_target_replicated_to_rgb_gives_one_warning_naming_the_channels(jitter):
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet, per channel
    check, warns = normalization_check(_record(_gray_as_rgb(jitter=jitter)), mean, std, "weights")
    assert check["ok"] is False and [c["ok"] for c in check["channels"]] == [False] * 3
    (warning,) = warns
    assert "all channels 0, 1 and 2" in warning
    assert ("the same mean" if jitter == 0 else "nearly the same mean") in warning
    assert "means 0.485, 0.456, 0.406 and stds 0.229, 0.224, 0.225" in warning
    assert warning.count("--normalize") == 1


def test_channels_that_fail_differently_are_listed_in_one_warning():
    imgs = [
        torch.stack([torch.full((4, 4), 0.05), torch.full((4, 4), 0.5), torch.rand(4, 4)])
        for _ in range(6)
    ]
    check, warns = normalization_check(_record(imgs), [0.5] * 3, [0.29] * 3, "weights")
    failing = [c["channel"] for c in check["channels"] if not c["ok"]]
    (warning,) = warns
    assert failing == [0, 1] and "in channels 0 and 1 do not fit" in warning
    assert "channel 0 has mean 0.050" in warning and "channel 1 has mean 0.500" in warning
    assert "channel 2" not in warning


def test_a_batch_of_mixed_images_is_recorded_as_numpy_computes_it():
    # float32 pixels: the deviations are rounded to float32 before they are squared, so the
    # contrast holds to a few float32 ulps (rtol 1e-6); sums are float64 (rtol 1e-12).
    rng = np.random.default_rng(4)
    shapes = [(3, 6, 5), (3, 4, 4), (3, 6, 5), (3, 4, 4), (3, 6, 5)]
    imgs = [torch.tensor(rng.random(s) * 0.5 + 0.3, dtype=torch.float32) for s in shapes]
    rec = ImageStats()
    rec.record_pixel_batch([10, 11, 12, 11, 13], imgs)  # index 11 twice: recorded once
    kept = [imgs[i].double().numpy() for i in (0, 1, 2, 4)]
    assert rec.n == 4
    np.testing.assert_allclose(rec.values("brightness"), [k.mean() for k in kept], rtol=1e-12)
    np.testing.assert_allclose(rec.values("contrast"), [k.std() for k in kept], rtol=1e-6)
    flat = np.concatenate([k.reshape(3, -1) for k in kept], axis=1)
    np.testing.assert_allclose(rec.channel_mean(), flat.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(rec.channel_std(), flat.std(axis=1), rtol=1e-6)
    rec.record_pixel_batch([12, 10], imgs[:2])  # a second epoch adds nothing
    assert rec.n == 4 and rec.pixel_count == flat.shape[1]


def test_a_flat_image_has_contrast_exactly_zero():
    rec = ImageStats()
    rec.record_pixel_batch([0, 1], [torch.full((3, 7, 9), 0.1), torch.full((3, 7, 9), 1 / 3)])
    assert rec.values("contrast").tolist() == [0.0, 0.0]
    np.testing.assert_allclose(rec.values("brightness"), [0.1, 1 / 3], rtol=1e-7)
