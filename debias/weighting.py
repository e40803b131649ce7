"""Sampling weights per epoch: the one seam between the training loop and how it debiases.

Before each epoch the loop asks its :class:`Weighting` for the epoch's weights over the training
rows and draws the epoch's batches by them; it never asks which method it holds. A method sees
the epoch through an :class:`EpochView`: the rows' classes, which rows the VAE models, the
manifest (group columns, for the oracle only) and the current model's latents, encoded lazily
and once per epoch however many methods ask. Every method keeps each class's share of the data:
resampling never changes the class balance.

- :class:`Uniform`: every row alike (the plain classifier, and every method's warm-up epochs);
- :class:`LatentRarity`: the DB-VAE — per-class histograms of the latent means, rare latents
  drawn more often (:class:`debias.resample.LatentHistogram`), or a joint density that sees
  combinations of dimensions (:class:`debias.mixture.LatentMixture`);
- :class:`ErrorFeedback`: after a few epochs of plain training, the training faces the model
  gets wrong are frozen as an error set (the identification model of JTT, Liu et al. 2021) and
  get a fixed share of their class's draws for the rest of the run; inside the error set and the
  rest, another weighting (the DB-VAE's rarity, or none) spreads the weight. Optionally only the
  errors that training on the *other* errors teaches are kept (:func:`learnable_errors`): a
  shortcut's exceptions form a group whose members teach each other, mislabeled or merely hard
  faces do not;
- :class:`GroupBalanced`: every combination of the given group columns weighs the same within
  its class. It reads group labels: the oracle the label-free methods are measured against.

A method that learns something it must keep (the frozen error set) exposes it through
``state_dict`` / ``load_state_dict``; the checkpoint carries it, so a resumed run draws as an
uninterrupted one would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from debias import errors
from debias.mixture import LatentMixture
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
    trial : callable, optional
        ``trial(weights, stream)`` trains a copy of the current model one epoch on a draw by
        ``weights`` ``(N,)`` (classification loss only) and returns every training row's class
        probabilities ``(N, C)`` under the copy; the run's model is untouched. ``stream`` (0, 1,
        ...) seeds the copy's draw and augmentation, so different trials draw differently.
    seed : int
        The run's seed, for methods that draw at random and were given no seed of their own.
    """

    epoch: int
    y: np.ndarray
    modelled: np.ndarray
    frame: pd.DataFrame
    encoder: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]
    trial: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    seed: int = 0
    _cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def encode_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent means and probabilities of every row, encoded once per epoch."""
        if "all" not in self._cache:
            self._cache["all"] = self.encoder(np.arange(len(self.y)))
        return self._cache["all"]

    def encode_modelled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent means and probabilities of the modelled rows, encoded once per epoch.

        Taken from :meth:`encode_all` when a method already encoded every row this epoch.
        """
        if "modelled" not in self._cache:
            if "all" in self._cache:
                mu, probs = self._cache["all"]
                mask = torch.from_numpy(self.modelled)
                self._cache["modelled"] = (mu[mask], probs[mask])
            else:
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
    """A way to weight the training rows of an epoch; the training loop's only debiasing seam.

    Pass one to :func:`debias.train` (``method=``), as fairlearn's mitigators are passed. The
    built-in methods below also say what they do in words (:meth:`describe`, for the model
    card), check their own parameters (:meth:`validate`) and save themselves in ``config.json``
    (:func:`debias.methods.to_dict`); a method of your own needs only these three methods.
    """

    def epoch_weights(self, view: EpochView) -> EpochWeights:
        """Return the sampling weights of the epoch ``view`` describes."""

    def state_dict(self) -> dict[str, Any]:
        """Return what the method learned and must keep across a resume (tensors, plain values)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class _Stateless:
    """For methods that keep nothing between epochs."""

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        pass

    def validate(self) -> None:  # noqa: D102
        pass


def uniform(n: int) -> EpochWeights:
    """Equal weights over ``n`` rows."""
    return EpochWeights(torch.full((n,), 1.0 / n), resampled=False)


@dataclass
class Uniform(_Stateless):
    """Every row alike: the plain classifier's sampling."""

    def epoch_weights(self, view: EpochView) -> EpochWeights:  # noqa: D102
        return uniform(len(view.y))

    def describe(self, epochs: int) -> str:  # noqa: D102
        return "uniform draws"


@dataclass
class GroupBalanced(_Stateless):
    """Every combination of ``columns`` weighs the same within its class (reads group labels)."""

    columns: list[str]

    def epoch_weights(self, view: EpochView) -> EpochWeights:  # noqa: D102
        return EpochWeights(group_balanced_weights(view.frame, self.columns, view.y), True)

    def validate(self) -> None:  # noqa: D102
        errors.check_option(
            bool(self.columns) and all(isinstance(c, str) and c for c in self.columns),
            "columns",
            self.columns,
            "names no group column",
            "Pass the group columns to balance, e.g. ['race', 'gender'].",
        )

    def describe(self, epochs: int) -> str:  # noqa: D102
        cells = " x ".join(self.columns)
        return f"draws that weigh every {cells} cell the same within each class (reads labels)"


Density = LatentHistogram | LatentMixture


@dataclass
class LatentRarity(_Stateless):
    """The DB-VAE: rows in rare regions of their class's latent density are drawn more often.

    The density is the paper's per-dimension histograms, or a joint Gaussian mixture that sees
    combinations of dimensions (:class:`debias.mixture.LatentMixture`); either is given unfitted
    and refitted each epoch. Rows the VAE does not model (non-faces in detection) carry no
    density to debias by and are drawn uniformly, keeping their share. Uniform during the first
    ``warmup_epochs`` epochs, until the latents mean something.
    """

    density: Density = field(default_factory=lambda: LatentHistogram(ess_fraction=0.5))
    warmup_epochs: int = 1

    def epoch_weights(self, view: EpochView) -> EpochWeights:  # noqa: D102
        if view.epoch < self.warmup_epochs or not view.modelled.any():
            return uniform(len(view.y))
        mu, _ = view.encode_modelled()
        y = torch.from_numpy(view.y)
        fitted = copy.deepcopy(self.density).fit(mu, y[view.modelled])
        return EpochWeights(spread(fitted.weights_, view.modelled), True)

    def validate(self) -> None:  # noqa: D102
        errors.check_option(
            isinstance(self.warmup_epochs, int) and self.warmup_epochs >= 0,
            "warmup_epochs",
            self.warmup_epochs,
            "must be a whole number, 0 or more",
            "Pass e.g. 1.",
        )
        getattr(self.density, "validate", lambda: None)()

    def describe(self, epochs: int) -> str:  # noqa: D102
        ess = self.density.ess_fraction
        if isinstance(self.density, LatentMixture):
            return (
                "a joint latent density (Gaussian mixtures on whitened principal axes, ESS "
                f"fraction {ess})"
            )
        return f"latent histograms ({self.density.combine} rule, ESS fraction {ess})"


@dataclass
class ErrorFeedback:
    """Upweight the training faces an early plain model gets wrong (JTT-style error feedback).

    For the first ``identify_epoch`` epochs the rows are drawn uniformly (a plain model, which
    learns whatever shortcut the data offers). Before epoch ``identify_epoch`` the current model
    classifies every training row; the rows it gets wrong become the error set, frozen for the
    rest of the run (a model trained on them would soon memorise them and the signal would
    vanish). From then on, within each class, the error set gets ``share`` of the
    class's draws and the other rows the rest; inside each part ``within`` (the DB-VAE's latent
    rarity, or uniform) spreads the weight. A class without errors keeps ``within``'s weights.
    Every class gets its error set, also classes the VAE does not model: a detector's missed
    faces and its false alarms alike. With ``learnable`` the error set keeps only the rows
    :func:`learnable_errors` finds (three trial epochs of a model copy, once).

    Parameters
    ----------
    identify_epoch : int
        Epochs of plain training before the error set is taken.
    share : float
        Share of each class's draws given to its error set, in (0, 1).
    within : Weighting
        Weights inside the error set and inside the rest.
    learnable : bool
        Keep only the errors that training on the other errors teaches.
    seed : int, optional
        Seeds the split of the error set into the folds of :func:`learnable_errors`; by
        default the run's seed.
    """

    identify_epoch: int = 3
    share: float = 0.25
    within: Weighting = field(default_factory=Uniform)
    learnable: bool = False
    seed: int | None = None
    errors_: np.ndarray | None = None  # (N,) bool, frozen at identify_epoch

    def epoch_weights(self, view: EpochView) -> EpochWeights:  # noqa: D102
        if view.epoch < self.identify_epoch:
            return uniform(len(view.y))
        if self.errors_ is None:
            _, probs = view.encode_all()
            errors = probs.argmax(1).numpy() != view.y
            if self.learnable:
                assert view.trial is not None, "learnable errors need the view's trial epochs"
                seed = view.seed if self.seed is None else self.seed
                errors &= learnable_errors(errors, view.y, view.trial, seed)
            self.errors_ = errors
        inner = self.within.epoch_weights(view).weights.double()
        return EpochWeights(error_balanced(inner, self.errors_, view.y, self.share), True)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        errors = None if self.errors_ is None else torch.from_numpy(self.errors_)
        return {"errors": errors, "within": self.within.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        errors = state.get("errors")
        self.errors_ = None if errors is None else errors.numpy().astype(bool)
        self.within.load_state_dict(state.get("within", {}))

    def validate(self) -> None:  # noqa: D102
        errors.check_option(
            0 < self.share < 1, "share", self.share, "must be in (0, 1)", "Pass e.g. 0.25."
        )
        errors.check_option(
            isinstance(self.identify_epoch, int) and self.identify_epoch >= 1,
            "identify_epoch",
            self.identify_epoch,
            "must be a whole number above 0",
            "Pass e.g. 3.",
        )
        getattr(self.within, "validate", lambda: None)()

    def unreached(self, epochs: int) -> bool:
        """Whether a run of ``epochs`` epochs ends before its error set is taken (all uniform)."""
        return self.identify_epoch >= epochs

    def describe(self, epochs: int) -> str:  # noqa: D102
        if self.unreached(epochs):
            return (
                f"uniform draws (error feedback starts after epoch {self.identify_epoch}, and "
                f"the run had {epochs})"
            )
        kept = " that training on the other errors teaches" if self.learnable else ""
        words = (
            f"error feedback (the errors of epoch {self.identify_epoch}{kept} get "
            f"{self.share:.0%} of each class's draws)"
        )
        if isinstance(self.within, LatentRarity):
            return f"{words} with {self.within.describe(epochs)}"
        return words


TEACHING_SHARE = 0.5  # the teaching fold's share of its class's draws in a trial: a strong dose


def learnable_errors(
    errors: np.ndarray,
    y: np.ndarray,
    trial: Callable[[torch.Tensor, int], torch.Tensor],
    seed: int,
) -> np.ndarray:
    """Return the error rows that training on the *other* error rows teaches.

    A shortcut's exceptions (the young men of a task where youth goes with women) form a group:
    a model that sees more of some of them gets the others right more often. Mislabeled or
    merely hard faces do not teach each other. So each class's error rows are split at random
    into two folds; a copy of the model trains one epoch with one fold at half of its class's
    draws and the other fold left out, and a control copy trains one epoch on uniform draws. A
    held-out error row is kept when the copy that saw the other fold gives its true class a
    higher probability than the control does (no threshold to tune). On `utk-age` a prototype
    raised the shortcut-breaking faces' part of the error set from 30-37% to 39-49%, keeping
    243-269 of 430-450 errors (benchmarks/experiments/error-set-purity.md).

    Parameters
    ----------
    errors : numpy.ndarray
        ``(N,)`` bool, the rows the model gets wrong.
    y : numpy.ndarray
        ``(N,)`` class of each row.
    trial : callable
        :attr:`EpochView.trial`.
    seed : int
        Seeds the folds.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` bool, the kept error rows (a subset of ``errors``).
    """
    return learnability(errors, y, trial, seed) > 0


def learnability(
    errors: np.ndarray,
    y: np.ndarray,
    trial: Callable[[torch.Tensor, int], torch.Tensor],
    seed: int,
) -> np.ndarray:
    """Return each error row's gain from training on the other fold (:func:`learnable_errors`).

    The gain is the row's true-class probability after the trial that taught the other fold
    minus after the control trial, ``(N,)`` float64; NaN for the rows that are not errors. No
    trial runs when there are no errors.
    """
    gain = np.full(len(y), np.nan)
    if not errors.any():
        return gain
    fold = np.random.default_rng(seed).integers(0, 2, len(y))  # (N,) 0 or 1
    rows = np.arange(len(y))
    control = trial(uniform(len(y)).weights, 0)[rows, y].double()  # (N,) p(true class)
    for f in (0, 1):
        teacher, held_out = errors & (fold == f), errors & (fold != f)
        inner = torch.from_numpy(~held_out).double()  # the held-out fold is never drawn
        taught = trial(error_balanced(inner, teacher, y, TEACHING_SHARE), 1 + f)[rows, y].double()
        gain[held_out] = (taught - control)[held_out].numpy()
    return gain


def error_balanced(
    inner: torch.Tensor, errors: np.ndarray, y: np.ndarray, share: float
) -> torch.Tensor:
    """Give each class's error rows ``share`` of its weight, spread by ``inner`` within each part.

    Each class keeps its share of the rows. A class with no errors, or only errors, keeps
    ``inner``'s weights; so does a class one of whose parts ``inner`` gives no weight (a zero
    inner weight leaves a row out), and a class ``inner`` leaves out whole is drawn uniformly.
    """
    inner = inner.double()
    w = inner.clone()
    for c in np.unique(y):
        members = y == c
        parts = (members & errors, members & ~errors)
        if min(float(inner[torch.from_numpy(part)].sum()) for part in parts) <= 0:
            total = inner[members].sum()
            w[members] = inner[members] / total if total > 0 else 1.0 / members.sum()
        else:
            for part, part_share in zip(parts, (share, 1.0 - share), strict=True):
                rows = torch.from_numpy(part)
                w[rows] = inner[rows] / inner[rows].sum() * part_share
        w[members] *= members.mean()  # the class keeps its share of the rows
    return (w / w.sum()).float()


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
