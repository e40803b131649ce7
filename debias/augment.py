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

    brightness, contrast, saturation = (1 + JITTER * (2 * r[:, i] - 1) for i in (1, 2, 3))
    x = x * brightness[:, None, None, None]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (x - mean) * contrast[:, None, None, None] + mean
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, S, S)
    x = (x - gray) * saturation[:, None, None, None] + gray
    x = x.clamp(0, 1)

    # An integer pixel shift as an affine grid; reflection fills the uncovered border.
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shift.to(x.dtype) * 2 / s
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="reflection", align_corners=False)
