"""Tests of diagnose.data.preprocessing's preprocess: channels, resize, normalisation, and
its batched fetch (DataLoader's ``__getitems__``) against the item-by-item one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diagnose.data import ImageStats, Preprocessing, load_domain, prepared_dataset
from diagnose.data.preprocessing import preprocess
from probes import fetch_items


class _Fixed(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.x, 7


def test_preprocess_channels():
    gray = torch.rand(1, 4, 4)
    x, y = preprocess(_Fixed(gray), channels=3)[0]
    assert y == 7 and x.shape == (3, 4, 4) and all(torch.equal(x[c], gray[0]) for c in range(3))
    rgb = torch.rand(3, 4, 4)
    x, _ = preprocess(_Fixed(rgb), channels=1)[0]
    torch.testing.assert_close(x, rgb.mean(0, keepdim=True))
    rgba = torch.rand(4, 4, 4)
    x, _ = preprocess(_Fixed(rgba))[0]
    assert torch.equal(x, rgba[:3])


def test_preprocess_resize_and_normalise_exact():
    img = torch.rand(3, 10, 6)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    x, _ = preprocess(_Fixed(img), image_size=(5, 3), mean=mean, std=std)[0]
    ref = F.interpolate(
        img[None], size=(5, 3), mode="bilinear", antialias=True, align_corners=False
    )[0]
    ref = (ref - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(x, ref)
    # Constant images stay constant through the resize; normalisation is exact.
    x, _ = preprocess(_Fixed(torch.full((1, 8, 8), 0.75)), image_size=4, mean=[0.5], std=[0.25])[0]
    torch.testing.assert_close(x, torch.ones(1, 4, 4))


def test_preprocess_accepts_domain_and_validates():
    d = load_domain("demo:digits")
    ds = preprocess(d, image_size=16, channels=3, mean=[0.5] * 3, std=[0.5] * 3)
    assert len(ds) == len(d) and ds[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match=r"mean/std have 1 values for 3 channels"):
        preprocess(d, channels=3, mean=[0.5], std=[0.5])
    with pytest.raises(ValueError, match=r"mean has 3 values and std 1"):
        preprocess(d, mean=[0.5] * 3, std=[0.5])
    with pytest.raises(ValueError, match=r"std must be positive"):
        preprocess(d, mean=[0.5], std=[0.0])
    with pytest.raises(ValueError, match=r"pass both mean and std"):
        preprocess(d, mean=[0.5])
    with pytest.raises(ValueError, match=r"mean/std have 3 values but the images have 1 channels"):
        preprocess(d, mean=[0.5] * 3, std=[0.5] * 3)[0]


class _Listed(torch.utils.data.Dataset):
    """Images of any sizes, item by item only (no ``__getitems__``): an ImageFolder stand-in."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i


def _mixed(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(1, 9, 7), (3, 12, 12), (1, 9, 7), (4, 5, 8), (3, 12, 12), (1, 4, 4), (1, 9, 7)]
    return [torch.rand(s, generator=gen) for s in shapes]


@pytest.mark.parametrize("channels", [None, 1, 3])
@pytest.mark.parametrize("normalise", [False, True])
def test_a_batch_is_matched_exactly_as_its_items_one_by_one(channels, normalise):
    # Same code on the same data in one process: a batch of mixed sizes and channel
    # counts comes back bit for bit as the items fetched alone, each in its place.
    images = _mixed()
    if channels is None:
        images = [im for im in images if im.shape[0] == 3]
    c = channels or 3
    kw = {"mean": [0.4] * c, "std": [0.3] * c} if normalise else {}
    ds = preprocess(_Listed(images), image_size=(6, 10), channels=channels, **kw)
    batch = fetch_items(ds, list(range(len(images))))
    for i, (x, y) in enumerate(batch):
        alone, label = ds[i]
        assert y == label == i and torch.equal(x, alone)
        assert x.shape == (c, 6, 10) and x.is_contiguous()


def test_gray_to_rgb_resizes_once_and_replicates_exactly():
    # Resizing the one channel then replicating equals replicating then resizing each
    # channel (each channel is resized on its own): bit for bit, not within a tolerance.
    gray = torch.rand(5, 1, 9, 13, generator=torch.Generator().manual_seed(3))
    ds = preprocess(_Listed(list(gray)), image_size=32, channels=3)
    ref = F.interpolate(gray.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", antialias=True)
    for i in range(len(gray)):
        assert torch.equal(ds[i][0], ref[i])


def test_prepared_batches_record_the_same_statistics_as_items():
    # The statistics of a batched read against an item-by-item read of the same images:
    # the same values up to float64 summation order (relative 1e-12), in the same order.
    d = load_domain("demo:digits-invert")
    prep = Preprocessing((20, 20), 3, [0.5] * 3, [0.25] * 3)
    idx = np.arange(0, 200, 3)
    by_batch, by_item = ImageStats(), ImageStats()
    batched = prepared_dataset(d, idx, prep, by_batch)
    single = prepared_dataset(d, idx, prep, by_item)
    xs = [
        x
        for part in range(0, len(idx), 16)
        for x, _ in fetch_items(batched, list(range(part, min(part + 16, len(idx)))))
    ]
    ys = [single[i][0] for i in range(len(idx))]
    assert all(torch.equal(a, b) for a, b in zip(xs, ys))
    assert by_batch.n == by_item.n == len(idx)
    for key in ("height", "width", "brightness", "contrast"):
        np.testing.assert_allclose(by_batch.values(key), by_item.values(key), rtol=1e-12)
    np.testing.assert_allclose(by_batch.channel_mean(), by_item.channel_mean(), rtol=1e-12)
    np.testing.assert_allclose(by_batch.channel_std(), by_item.channel_std(), rtol=1e-9)
