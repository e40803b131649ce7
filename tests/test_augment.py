"""Batch augmentation: repeatable from the generator, images stay images."""

from __future__ import annotations

import torch

from debias.augment import augment


def test_augment_keeps_shape_and_range_and_is_repeatable() -> None:
    x = torch.rand(16, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    c = augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_shift_moves_content_by_at_most_four_pixels() -> None:
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 14:18, 14:18] = 1.0  # a bright square in the centre
    out = augment(x, torch.Generator().manual_seed(0))
    for img in out:
        ys, xs = torch.nonzero(img[0] > img[0].mean() + 0.1, as_tuple=True)
        assert 10 <= ys.min() and ys.max() <= 21 and 10 <= xs.min() and xs.max() <= 21
