"""Repair a classifier with a few group labels: refit its last layer (DFR), never for the worse.

(The module is ``refit`` so that ``debias.repair`` stays the function, never this module.)

``repair(model, images, y_true, sensitive_features)`` reads the features the model's last linear
layer sees on a small group-labelled set, fits :class:`debias.lastlayer.LastLayerRepair` on them
and returns the model with that layer replaced — or unchanged, when the new layer's
cross-validated worst cell is not above the old layer's on the same faces. Which layer:

- a DB-VAE (a debias run): the classifier's rows of the head, reading the ``hidden`` tap;
- any other ``torch.nn.Module``: the layer named ``feature_layer``, else its last ``nn.Linear``.

Cells are (class, group) pairs, a group being the combination of the sensitive features' values.
A cell of the labelled set with fewer than :data:`~debias.lastlayer.MIN_CELL` faces is named in a
warning; a class with no face of a group that other classes have is an error unless
``allow_empty_cells``. The faces used here are the faces the repair fits and cross-validates on:
an improvement is claimed on other faces only (``debias repair --eval-labels``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from debias import errors
from debias.fairness.audit import sensitive_frame
from debias.fairness.bootstrap import clopper_pearson
from debias.lastlayer import MIN_CELL, LastLayerRepair
from debias.model import DBVAE, preprocess
from debias.predict import normaliser

BATCH = 256


@dataclass
class RepairResult:
    """What :func:`repair` returns.

    Attributes
    ----------
    model : torch.nn.Module
        The repaired model, or the model as it was when the repair did not help (a copy either
        way: the model passed in is never changed).
    repaired : bool
        Whether the last layer was replaced.
    estimator : LastLayerRepair
        The fitted estimator: the chosen ``C_``, cross-validated cells, the old layer's cells.
    classes : list of str
        Class names in output order.
    warnings : list of str
        Cells too small to judge.
    """

    model: torch.nn.Module
    repaired: bool
    estimator: LastLayerRepair
    classes: list[str]
    warnings: list[str] = field(default_factory=list)

    def card(self, labels: str) -> dict[str, Any]:
        """Return what a run's ``config.json`` keeps of the repair for its model card."""
        return {"repaired": self.repaired, "C": self.estimator.C_,
                "labelled": int(sum(self.estimator.cells_.values())), "labels": labels}  # fmt: skip

    def summary(self) -> dict[str, Any]:
        """Return what ``repair.json`` records: faces per cell, C, both layers' worst cells."""
        est = self.estimator
        return {
            "repaired": self.repaired,
            "C": est.C_,
            "labelled": int(sum(est.cells_.values())),
            "cells": [
                {
                    "class": self.classes[int(c)],
                    "group": g,
                    "n": n,
                    "cv_accuracy_new": est.cv_cells_[(c, g)],
                    "cv_accuracy_new_ci": _exact(est.cv_cells_[(c, g)], n),
                    "accuracy_old": est.old_cells_.get((c, g)),
                    "accuracy_old_ci": _exact(est.old_cells_.get((c, g)), n),
                }
                for (c, g), n in est.cells_.items()
            ],
            "cv_worst_cell_new": est.cv_worst_,
            "cv_worst_cell_new_ci": _worst_ci(est.cv_cells_, est.cells_),
            "worst_cell_old": est.old_worst_,
            "worst_cell_old_ci": _worst_ci(est.old_cells_, est.cells_),
            "interval": "exact binomial (Clopper-Pearson) 95% interval of a cell's accuracy",
            "estimate": "cross-validated on the labelled faces the repair was fitted on",
            "warnings": self.warnings,
        }


def _exact(accuracy: float | None, n: int) -> list[float] | None:
    """Return the 95% exact interval of an accuracy over ``n`` faces (None for none)."""
    return None if accuracy is None else list(clopper_pearson(round(accuracy * n), n))


def _worst_ci(accuracy: dict[tuple, float], sizes: dict[tuple, int]) -> list[float] | None:
    """Return the interval of the worst cell's accuracy (with that cell's own size)."""
    if not accuracy:
        return None
    cell = min(accuracy, key=accuracy.get)
    return _exact(accuracy[cell], sizes[cell])


def repair(
    model: torch.nn.Module,
    images: np.ndarray | torch.Tensor,
    y_true: Sequence[object],
    sensitive_features: object,
    *,
    classes: Sequence[str],
    feature_layer: str | None = None,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    allow_empty_cells: bool = False,
    estimator: LastLayerRepair | None = None,
) -> RepairResult:
    """Refit a classifier's last layer on group-balanced draws of a few labelled faces (DFR).

    Parameters
    ----------
    model : torch.nn.Module
        A DB-VAE (:class:`debias.model.DBVAE`, fed as debias feeds its runs) or any module
        mapping float images ``(B, 3, S, S)`` to logits ``(B, C)`` through a last linear layer.
    images : numpy.ndarray or torch.Tensor
        uint8 images ``(N, 3, S, S)``, RGB, of the labelled faces.
    y_true : array-like
        True class name of each face.
    sensitive_features : array-like, Series, DataFrame or dict
        Group attributes of each face, as fairlearn's ``MetricFrame`` takes them.
    classes : sequence of str
        Class names in the model's output order.
    feature_layer : str, optional
        Name (as in ``named_modules``) of the linear layer to refit; default: the last
        ``nn.Linear``. Not used for a DB-VAE.
    mean, std : sequence of float
        The normalisation a module was trained with (inputs are ``(x / 255 - mean) / std``).
    allow_empty_cells : bool
        Go on when a class has no face of a group the other classes have.
    estimator : LastLayerRepair, optional
        The estimator to fit (default: ``LastLayerRepair()``).

    Returns
    -------
    RepairResult

    Examples
    --------
    >>> result = repair(net, images, y, df[["race"]], classes=["f", "m"])  # doctest: +SKIP
    >>> result.repaired, result.estimator.cv_worst_  # doctest: +SKIP
    """
    classes = [str(c) for c in classes]
    layer = LastLayer.of(model, feature_layer, len(classes))
    features = layer.features(_uint8(images), mean, std)  # (N, D)
    est, warnings = fit_layer(
        features, y_true, sensitive_features, layer.weights(), classes, allow_empty_cells, estimator
    )
    fixed = layer.with_weights(est.coef_, est.intercept_) if est.improved_ else layer.copy()
    return RepairResult(fixed, bool(est.improved_), est, classes, warnings)


def fit_layer(
    features: np.ndarray,
    y_true: Sequence[object],
    sensitive_features: object,
    old: tuple[np.ndarray, np.ndarray],
    classes: list[str],
    allow_empty_cells: bool = False,
    estimator: LastLayerRepair | None = None,
) -> tuple[LastLayerRepair, list[str]]:
    """Check the labelled cells and fit the estimator on features the layer reads.

    ``old`` is the layer as it is, ``(C, D)`` weights and ``(C,)`` biases. Returns the fitted
    estimator and the warnings about small cells. Every model kind's repair goes through here.
    """
    y, groups = _labels(y_true, sensitive_features, classes, len(features))
    warnings = _check_cells(y, groups, classes, allow_empty_cells)
    est = copy.deepcopy(estimator) if estimator is not None else LastLayerRepair()
    est.fit(features, y, groups, n_classes=len(classes), old_coef=old[0], old_intercept=old[1])
    return est, warnings


@dataclass
class LastLayer:
    """A model and the linear layer whose rows ``0..C-1`` give its class logits."""

    model: torch.nn.Module
    linear: torch.nn.Linear
    name: str
    n_classes: int

    @classmethod
    def of(cls, model: torch.nn.Module, feature_layer: str | None, n_classes: int) -> LastLayer:
        """Find the layer: a DB-VAE's head, the named layer, or the last ``nn.Linear``."""
        if isinstance(model, DBVAE):
            return cls(model, model.encoder.head, "encoder.head", n_classes)
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        if feature_layer is not None:
            errors.check_option(
                feature_layer in linears,
                "feature_layer",
                feature_layer,
                "is not a linear layer of the model",
                f"Name one of: {', '.join(linears) or 'none (the model has no nn.Linear)'}.",
            )
        errors.check_option(
            bool(linears),
            "model",
            type(model).__name__,
            "has no nn.Linear layer to refit",
            "Pass a model whose class logits come from a linear layer.",
        )
        name = feature_layer or list(linears)[-1]
        linear = linears[name]
        errors.check_option(
            linear.out_features == n_classes,
            "feature_layer",
            name,
            f"has {linear.out_features} outputs and there are {n_classes} classes",
            "Name the layer that gives the class logits (feature_layer=...).",
        )
        return cls(model, linear, name, n_classes)

    @torch.no_grad()
    def features(self, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> Any:
        """Return what the layer reads for each image, ``(N, D)`` float64, in eval mode."""
        was_training = self.model.training
        self.model.eval()
        caught: list[torch.Tensor] = []
        hook = self.linear.register_forward_hook(lambda _m, i, _o: caught.append(i[0].detach()))
        run = self._runner(mean, std)
        try:
            for start in range(0, len(images), BATCH):
                run(images[start : start + BATCH])
        finally:
            hook.remove()
            self.model.train(was_training)
        return torch.cat(caught).double().cpu().numpy() if caught else np.zeros((0, 0))

    def _runner(self, mean: Sequence[float], std: Sequence[float]) -> Any:
        """Return how uint8 images go through the model: as debias feeds a run, or normalised."""
        if isinstance(self.model, DBVAE):
            size = self.model.cfg.image_size
            return lambda x: self.model.encode(preprocess(x, size))  # the head runs in encode
        normalise = normaliser(mean, std)
        return lambda x: self.model(normalise(x))

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the class rows of the layer: ``(C, D)`` weights and ``(C,)`` biases."""
        w = self.linear.weight.detach()[: self.n_classes].double().cpu().numpy()
        if self.linear.bias is None:
            return w, np.zeros(self.n_classes)
        return w, self.linear.bias.detach()[: self.n_classes].double().cpu().numpy()

    def copy(self) -> torch.nn.Module:
        """Return a copy of the model as it is."""
        return copy.deepcopy(self.model)

    def with_weights(self, coef: np.ndarray, intercept: np.ndarray) -> torch.nn.Module:
        """Return a copy of the model whose class rows are ``coef`` ``(C, D)``, ``intercept``."""
        fixed = self.copy()
        linear = dict(fixed.named_modules())[self.name]
        with torch.no_grad():
            dtype = linear.weight.dtype
            linear.weight[: self.n_classes] = torch.from_numpy(coef).to(dtype)
            if linear.bias is None:  # the new layer needs a bias
                linear.bias = torch.nn.Parameter(torch.zeros(linear.out_features, dtype=dtype))
            linear.bias[: self.n_classes] = torch.from_numpy(intercept).to(dtype)
        return fixed


def _uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    errors.check_option(
        x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3,
        "images",
        f"{x.dtype} array of shape {tuple(x.shape)}",
        "must be uint8 RGB images (N, 3, S, S)",
        "Pass decoded images as uint8, channels first.",
    )
    return x


def _labels(
    y_true: Sequence[object], features: object, classes: list[str], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class index ``(N,)`` and group label ``(N,)`` (the features' values joined) of each face."""
    errors.check_option(
        len(y_true) == n,
        "y_true",
        f"{len(y_true)} labels",
        f"needs one per image ({n})",
        "Pass a class name for every image.",
    )
    names = pd.Series(list(y_true)).astype(str)
    y = pd.Index(classes).get_indexer(names)
    errors.check_option(
        bool((y >= 0).all()),
        "y_true",
        names[y < 0].iloc[0] if (y < 0).any() else "",
        "is not one of the classes",
        f"Use the model's classes: {', '.join(classes)}.",
    )
    frame = sensitive_frame(features, n)
    errors.check_option(
        frame.shape[1] > 0,
        "sensitive_features",
        None,
        "names no group: a repair balances groups it is told",
        "Pass the group columns of the labelled faces, e.g. df[['race', 'gender']].",
    )
    groups = frame.astype(str).agg(" & ".join, axis=1).to_numpy()
    return y.astype(np.int64), groups


def _check_cells(
    y: np.ndarray, groups: np.ndarray, classes: list[str], allow_empty: bool
) -> list[str]:
    """Refuse a class with no face of a group, unless allowed; warn about small cells."""
    table = pd.crosstab(pd.Series(groups, name="group"), pd.Series(y, name="class"))
    table = table.reindex(columns=range(len(classes)), fill_value=0)
    empty = [(classes[c], g) for g in table.index for c in table.columns if table.at[g, c] == 0]
    if empty and not allow_empty:
        cells = ", ".join(f"{c} x {g}" for c, g in empty[:5])
        raise errors.DataError(errors.EMPTY_REPAIR_CELLS.format(n=len(empty), cells=cells))
    small = [(classes[c], g, int(table.at[g, c])) for g in table.index for c in table.columns]
    small = [s for s in small if 0 < s[2] < MIN_CELL]
    return [
        errors.SMALL_REPAIR_CELLS.format(
            min=MIN_CELL, cells=", ".join(f"{c} x {g} ({n})" for c, g, n in small)
        )
    ] * bool(small)
