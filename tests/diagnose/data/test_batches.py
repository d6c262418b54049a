"""Tests of diagnose.data.batches: grouping a batch of images by shape."""

from __future__ import annotations

import torch

from diagnose.data.batches import same_shape_groups


def test_groups_keep_every_image_at_its_position_in_first_seen_order():
    a, b = torch.rand(1, 4, 4), torch.rand(3, 2, 5)
    images = [a, b, a + 1, b.double(), b + 1]
    groups = same_shape_groups(images)
    assert [pos for pos, _ in groups] == [[0, 2], [1, 4], [3]]
    for pos, stacked in groups:
        assert stacked.shape == (len(pos), *images[pos[0]].shape)
        assert all(torch.equal(stacked[j], images[p]) for j, p in enumerate(pos))
    assert same_shape_groups([]) == []
