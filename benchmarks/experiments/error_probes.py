"""What the error-set probes share: a task's training split with its cells, and one epoch.

`probe_data` loads a task's training split as `debias train` draws it for a seed, with each
row's cell (age x gender on `utk-age`, race x gender otherwise); `train_epoch` trains a
classifier (the DB-VAE's encoder, classification loss only) one pass over given rows with the
project's augmentation. Used by `biased_errors.py`, `learnable_errors.py`, `xrm_errors.py`,
`latent_probe_errors.py` and the ``learn`` variants of `errors_variants.py`; `head_inputs`
reads a trained model's hidden layer, logits and latent means (`late_errors_probe.py`,
`latent_probe_errors.py`, `independence_clip.py`, `shared_direction.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from debias import FaceData, TrainConfig, load_data
from debias.augment import augment
from debias.encode import batches
from debias.model import DBVAE, preprocess
from debias.training import split_indices

D = Path(os.environ.get("SHARED_DATA", "../shared/data"))


def probe_data(task: str, seed: int) -> tuple[FaceData, np.ndarray, np.ndarray]:
    """The task's training data, the training split's rows and each of those rows' cell."""
    data = load_data(labels=str(D / f"{task}-train.csv"), groups=["race", "gender"], image_size=64)
    train_idx, _ = split_indices(data, TrainConfig().val_fraction, seed)
    frame = data.frame.iloc[train_idx].reset_index(drop=True)
    first = frame.label if task == "utk-age" else frame.race
    return data, train_idx, (first.astype(str) + " " + frame.gender.astype(str)).to_numpy()


def probe_model(
    data: FaceData, seed: int
) -> tuple[DBVAE, torch.optim.Optimizer, torch.Generator, torch.Generator]:
    """A fresh model seeded by ``seed``, its Adam, and the draw and augmentation generators."""
    torch.manual_seed(seed)
    model = DBVAE(len(data.classes), TrainConfig().model)
    opt = torch.optim.Adam(model.parameters(), lr=TrainConfig().lr)
    return model, opt, torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)


def train_epoch(
    model: DBVAE,
    opt: torch.optim.Optimizer,
    data: FaceData,
    rows: np.ndarray,
    generator: torch.Generator,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    batch_size: int = TrainConfig.batch_size,
) -> None:
    """Train ``model`` on ``data``'s rows ``rows``, in that order; augment with ``generator``."""
    model.train()
    for chunk, x in batches(data.images, rows, batch_size):
        logits = model.encode(augment(preprocess(x), generator))[0]
        loss = loss_fn(logits, torch.from_numpy(data.y[chunk]))
        opt.zero_grad()
        loss.backward()
        opt.step()


def head_inputs(
    model: DBVAE, data: FaceData, rows: np.ndarray
) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """The 512-d hidden layer ``(R, H)``, class logits ``(R, C)`` and latent means ``(R, K)``
    of ``data``'s rows ``rows``, unaugmented, in eval mode."""
    model.eval()
    hidden, logits, means = [], [], []
    with torch.no_grad():
        for s in range(0, len(rows), 512):
            h = model.encoder.features[:-1](
                preprocess(torch.from_numpy(data.images[rows[s : s + 512]]))
            )
            out = model.encoder.features[-1](h)
            hidden.append(h)
            logits.append(out[:, : model.num_classes])
            means.append(out[:, model.num_classes : model.num_classes + model.cfg.latent_dim])
    return torch.cat(hidden).numpy(), torch.cat(logits), torch.cat(means).numpy()
