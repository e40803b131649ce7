"""Batch augmentation on the training device: horizontal flip, colour jitter, ±4 px shift.

Upweighted rare faces are drawn many times an epoch; varying them keeps the classifier from
memorising the few there are. Randomness comes from the caller's generator so runs are repeatable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_SHIFT = 4  # pixels
JITTER = 0.2  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly flip, jitter and shift preprocessed images ``(B, 3, S, S)`` in ``[0, 1]``.

    Random numbers are drawn on the CPU from ``generator`` (so the same seed gives the same
    augmentation on any device) and moved to the images' device.
    """
    b, _, s, _ = x.shape
    r = torch.rand(b, 5, generator=generator).to(x.device)  # (B, 5)
    shift = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (b, 2), generator=generator).to(x.device)

    flip = r[:, 0] < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)

    # Brightness, contrast and saturation are each linear in the pixels, so together they are
    # one 3x3 colour matrix and an offset per image: a single batched product instead of a
    # dozen passes. Saturation mixes towards the grey 0.299 R + 0.587 G + 0.114 B, contrast
    # towards the (brightened) image mean; the weights sum to 1, so the offset needs no matrix.
    brightness, contrast, saturation = (1 + JITTER * (2 * r[:, i] - 1) for i in (1, 2, 3))
    grey = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype)
    eye = torch.eye(3, device=x.device, dtype=x.dtype)
    mix = saturation[:, None, None] * eye + (1 - saturation)[:, None, None] * grey  # (B, 3, 3)
    colour = (brightness * contrast)[:, None, None] * mix
    offset = brightness * x.mean(dim=(1, 2, 3)) * (1 - contrast)  # (B,)
    x = torch.bmm(colour, x.reshape(b, 3, s * s)).view(b, 3, s, s)
    x = x.add_(offset[:, None, None, None]).clamp_(0, 1)

    # An integer pixel shift: reflect-pad, then each image reads its own window (one gather;
    # an affine grid_sample did the same at three times the cost). The result is channels_last.
    padded = F.pad(x, (MAX_SHIFT,) * 4, mode="reflect").permute(0, 2, 3, 1)  # (B, S+8, S+8, 3)
    offsets = torch.arange(s, device=x.device)
    rows = (MAX_SHIFT + shift[:, 0, None] + offsets)[:, :, None]  # (B, S, 1)
    cols = (MAX_SHIFT + shift[:, 1, None] + offsets)[:, None, :]  # (B, 1, S)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)  # (B, 3, S, S)
