"""A run's few group-labelled faces (``TrainConfig.group_labels``): one half chooses, one repairs.

``debias train --group-labels few.csv`` reads group labels for those faces only. They are split
in two halves, stratified by (class, group) cell and seeded by the run: after every epoch the
model's worst cell accuracy on the first half is the ``val_worst_group`` score that
``select="worst-group"`` keeps the best epoch by; at the end the kept model's last layer is
repaired on the second half (:func:`debias.refit.repair`), so no face both chooses the epoch and
fits the layer, and a repair that does not beat the layer as it was is not kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from debias.config import TrainConfig
from debias.data import load_data
from debias.encode import encode
from debias.lastlayer import cell_labels
from debias.progress import Listener


@dataclass
class GroupLabels:
    """The decoded faces, their classes (the run's indices) and groups, and the two halves."""

    images: np.ndarray  # (N, 3, S, S) uint8
    names: np.ndarray  # (N,) class names
    y: np.ndarray  # (N,) class index in the run's classes
    frame: pd.DataFrame  # (N, groups) the group columns
    groups: list[str]
    cell: np.ndarray  # (N,) each face's (class, group) cell
    choose: np.ndarray  # (N,) bool: the half that chooses the epoch

    @classmethod
    def load(cls, config: TrainConfig, classes: list[str], listener: Listener) -> GroupLabels:
        """Decode ``config.group_labels`` at the run's image size and split it in halves."""
        data = load_data(
            labels=config.group_labels,
            groups=config.repair_groups,
            image_size=config.model.image_size,
            on_start=lambda n: listener.phase("decode", n),
            on_advance=listener.advance,
        )
        groups = list(config.repair_groups or data.group_columns)
        names = np.asarray(data.classes)[data.y]
        y = pd.Index(classes).get_indexer(names)
        frame = data.frame[groups].reset_index(drop=True)
        cell = cell_labels(names, frame.astype(str).agg("|".join, axis=1).to_numpy())
        return cls(data.images, names, y, frame, groups, cell, _halves(cell, config.seed))

    def worst_group(self, model: torch.nn.Module, device: torch.device) -> float | None:
        """Return the lowest (class, group) cell accuracy on the choosing half."""
        rows = np.flatnonzero(self.choose & (self.y >= 0))
        if len(rows) == 0:
            return None
        _, probs = encode(model, self.images, rows, device=device)
        correct = probs.argmax(1).numpy() == self.y[rows]
        return float(pd.Series(correct).groupby(self.cell[rows]).mean().min())

    def repair(self, model: torch.nn.Module, classes: list[str]) -> Any:
        """Repair ``model``'s last layer on the other half; return the :class:`RepairResult`."""
        from debias.refit import repair  # training needs it only at the very end

        rows = np.flatnonzero(~self.choose)
        return repair(
            model,
            self.images[rows],
            self.names[rows],
            self.frame.iloc[rows].reset_index(drop=True),
            classes=classes,
        )


def _halves(cell: np.ndarray, seed: int) -> np.ndarray:
    """Split each cell's faces at random in two halves; return the choosing half's mask."""
    rng = np.random.default_rng([seed, 7])
    choose = np.zeros(len(cell), dtype=bool)
    for c in np.unique(cell):
        members = rng.permutation(np.flatnonzero(cell == c))
        choose[members[: len(members) // 2]] = True
    return choose
