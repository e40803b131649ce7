"""Latent encoding: uint8 images in batches -> latent means and class probabilities.

One loop, used by training (the per-epoch latent pass and validation), the audit (slices and
densities) and the outlier detector. Images go through :func:`debias.model.preprocess`, exactly
as in training, with BatchNorm in eval mode; the model's previous mode is restored afterwards
(leaving it in eval mode would silently train the rest of a run with frozen BatchNorm statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

from debias.model import DBVAE, preprocess

EVAL_BATCH = 256  # inference batch: large enough to keep the cores busy, small in memory


def batches(
    images: np.ndarray, idx: np.ndarray, size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(indices, uint8 images)`` in chunks of ``size``; sorted reads are cache-friendly."""
    for start in range(0, len(idx), size):
        chunk = idx[start : start + size]
        yield chunk, torch.from_numpy(np.ascontiguousarray(images[chunk]))


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode, then restore the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def encoded_batches(
    model: DBVAE,
    images: np.ndarray,
    idx: np.ndarray | None,
    device: torch.device,
    on_advance: Callable[[int], None] | None = None,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield ``(x, taps)`` per batch of ``images[idx]`` (all images by default).

    ``x`` is the preprocessed batch ``(B, 3, S, S)``, ``taps`` the model's named taps of it
    (:meth:`debias.model.DBVAE.taps`: ``logits``, ``mu``, ``logvar``, ``hidden``, ``pooled``).

    Call it under ``torch.no_grad()`` and :func:`eval_mode`. Images of another size than the
    model's are resized (antialiased) first, so any audited or screened image set can be embedded.
    """
    idx = np.arange(len(images)) if idx is None else idx
    for _, x_u8 in batches(images, idx, EVAL_BATCH):
        x = preprocess(x_u8.to(device), model.cfg.image_size)  # (B, 3, S, S)
        yield x, model.taps(x)
        if on_advance is not None:
            on_advance(len(x))


@torch.no_grad()
def encode(
    model: DBVAE,
    images: np.ndarray,
    idx: np.ndarray | None = None,
    *,
    device: torch.device,
    on_advance: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means ``(N, K)`` and class probabilities ``(N, C)`` of ``images[idx]``, on the CPU.

    Parameters
    ----------
    model : DBVAE
    images : numpy.ndarray
        uint8 images ``(N_all, 3, S, S)``.
    idx : numpy.ndarray, optional
        Rows to encode, in order (default: all).
    device : torch.device
        Where the model runs.
    on_advance : callable, optional
        Called with the number of images of each finished batch.
    """
    mus = [torch.zeros(0, model.cfg.latent_dim)]
    probs = [torch.zeros(0, model.num_classes)]
    with eval_mode(model):
        for _, taps in encoded_batches(model, images, idx, device, on_advance):
            mus.append(taps["mu"].float().cpu())
            probs.append(torch.softmax(taps["logits"].float(), dim=1).cpu())
    return torch.cat(mus), torch.cat(probs)
