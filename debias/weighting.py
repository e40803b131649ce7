"""Sampling weights per epoch: the one seam between the training loop and how it debiases.

Before each epoch the loop asks its :class:`Weighting` for the epoch's weights over the training
rows and draws the epoch's batches by them; it never asks which method it holds. A method sees
the epoch through an :class:`EpochView`: the rows' classes, which rows the VAE models, the
manifest (group columns, for the oracle only) and the current model's latents, encoded lazily
and once per epoch however many methods ask. Every method keeps each class's share of the data:
resampling never changes the class balance.

- :class:`Uniform`: every row alike (the plain classifier, and every method's warm-up epochs);
- :class:`LatentRarity`: the DB-VAE — per-class histograms of the latent means, rare latents
  drawn more often (:class:`debias.resample.LatentHistogram`);
- :class:`GroupBalanced`: every combination of the given group columns weighs the same within
  its class. It reads group labels: the oracle the label-free methods are measured against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from debias.config import TrainConfig
from debias.resample import LatentHistogram


@dataclass
class EpochView:
    """What a weighting method may look at before an epoch.

    Attributes
    ----------
    epoch : int
        The epoch about to start, from 0.
    y : numpy.ndarray
        Class of each training row, ``(N,)``.
    modelled : numpy.ndarray
        Whether the VAE models each row (faces in detection; every row otherwise), ``(N,)`` bool.
    frame : pandas.DataFrame
        The training rows' manifest (path, label, group columns), in order.
    encoder : callable
        ``encoder(rows)`` returns the latent means ``(R, K)`` and class probabilities ``(R, C)``
        of training rows ``rows`` (positions into ``y``) under the current model.
    """

    epoch: int
    y: np.ndarray
    modelled: np.ndarray
    frame: pd.DataFrame
    encoder: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]
    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def encode_modelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent means and probabilities of the modelled rows, encoded once per epoch."""
        if "modelled" not in self._cache:
            self._cache["modelled"] = self.encoder(np.flatnonzero(self.modelled))
        return self._cache["modelled"]


@dataclass
class EpochWeights:
    """An epoch's sampling weights over the training rows.

    Attributes
    ----------
    weights : torch.Tensor
        Sampling probability of each training row, ``(N,)`` float32, summing to 1.
    resampled : bool
        False when the weights are uniform (the metrics record it).
    """

    weights: torch.Tensor
    resampled: bool


class Weighting(Protocol):
    """A way to weight the training rows of an epoch; the training loop's only debiasing seam."""

    def epoch_weights(self, view: EpochView) -> EpochWeights:
        """Return the sampling weights of the epoch ``view`` describes."""


def uniform(n: int) -> EpochWeights:
    """Equal weights over ``n`` rows."""
    return EpochWeights(torch.full((n,), 1.0 / n), resampled=False)


class Uniform:
    """Every row alike: the plain classifier's sampling."""

    def epoch_weights(self, view: EpochView) -> EpochWeights:  # noqa: D102
        return uniform(len(view.y))


@dataclass
class GroupBalanced:
    """Every combination of ``columns`` weighs the same within its class (reads group labels)."""

    columns: list[str]

    def epoch_weights(self, view: EpochView) -> EpochWeights:  # noqa: D102
        return EpochWeights(group_balanced_weights(view.frame, self.columns, view.y), True)


@dataclass
class LatentRarity:
    """The DB-VAE: rows in rare regions of their class's latent histograms are drawn more often.

    Rows the VAE does not model (non-faces in detection) carry no density to debias by and are
    drawn uniformly, keeping their share. Uniform during the first ``warmup_epochs`` epochs,
    until the latents mean something.
    """

    histogram: Callable[[], LatentHistogram]
    warmup_epochs: int = 1

    def epoch_weights(self, view: EpochView) -> EpochWeights:  # noqa: D102
        if view.epoch < self.warmup_epochs or not view.modelled.any():
            return uniform(len(view.y))
        mu, _ = view.encode_modelled()
        y = torch.from_numpy(view.y)
        fitted = self.histogram().fit(mu, y[view.modelled])
        return EpochWeights(spread(fitted.weights_, view.modelled), True)


def spread(modelled_weights: torch.Tensor, modelled: np.ndarray) -> torch.Tensor:
    """Weights over all rows: the modelled rows' weights, uniform ones for the rest.

    The modelled rows together keep their share of the rows, so a detection task's non-faces
    are drawn as often as without resampling.
    """
    n = len(modelled)
    mask = torch.from_numpy(modelled)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    fitted = modelled_weights.double()
    weights[mask] = fitted / fitted.sum() * (int(mask.sum()) / n)
    return weights.float()


def group_balanced_weights(frame: pd.DataFrame, columns: list[str], y: np.ndarray) -> torch.Tensor:
    """Weight every combination of ``columns`` equally within its class.

    Each class keeps its share of the data; rows with an empty group value form a cell of their own.
    """
    cell = frame[columns].astype(str).agg("|".join, axis=1).to_numpy()
    key = pd.Series(y.astype(str)) + "#" + pd.Series(cell)
    cell_size = key.map(key.value_counts()).to_numpy(np.float64)
    cells_per_class = pd.Series(key.unique()).str.split("#").str[0].value_counts()
    class_size = np.bincount(y).astype(np.float64)
    n_cells = pd.Series(y.astype(str)).map(cells_per_class).to_numpy(np.float64)
    w = class_size[y] / len(y) / n_cells / cell_size
    return torch.from_numpy(w / w.sum()).float()


def histogram_for(config: TrainConfig) -> LatentHistogram:
    """Return the (unfitted) latent histogram a run's settings describe."""
    return LatentHistogram(
        bins=config.bins,
        alpha=config.alpha,
        combine=config.combine,
        ess_fraction=config.ess_fraction or None,
        n_components=config.density_components,
    )


def weighting_for(config: TrainConfig) -> Weighting:
    """Return the weighting method a run's settings ask for."""
    if config.balance_groups:
        return GroupBalanced(list(config.balance_groups))
    if config.baseline:
        return Uniform()
    return LatentRarity(lambda: histogram_for(config), config.warmup_epochs)
