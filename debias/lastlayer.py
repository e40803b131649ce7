"""Last-layer repair: retrain a classifier's last linear layer on a few group-labelled examples.

Deep Feature Reweighting (DFR; Kirichenko, Izmailov and Wilson, ICLR 2023, "Last Layer
Re-Training is Sufficient for Robustness to Spurious Correlations") keeps the network and refits
only its last layer, by L1-regularised logistic regression on group-balanced draws of a small
group-labelled set. Here, read top to bottom:

- cells are (class, group) pairs; a draw takes the same number of examples from every cell (the
  smallest cell's size, at most ``max_per_cell``), so no cell outweighs another;
- features are standardised on the labelled set; each draw fits a logistic regression (L1,
  multinomial for more than two classes) and the layers of ``n_draws`` draws are averaged;
- ``C`` is chosen by the worst cell's accuracy under stratified cross-validation on the labelled
  set; the same folds give the cross-validated worst cell of the new layer, and the layer as it
  was is scored on the same examples (it never saw them), so the two compare like for like;
- :attr:`LastLayerRepair.improved_` says whether the new layer beat the old one by that
  evidence. The callers keep the old layer when it did not: a repair is never worse by its own
  evidence.

The estimator works on feature arrays (what the layer reads) and is usable on features a user
extracted themselves; :mod:`debias.refit` extracts them from models and writes layers back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from debias import errors

# Inverse regularisation strengths tried: DFR's grid (1/C in 0.3-1000 there), on standardised
# features of a few hundred examples
CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MIN_CELL = 10  # fewer labelled examples than this in a cell: too few to judge it, say so


class LastLayerRepair:
    """Refit a last linear layer on group-balanced draws of group-labelled features (DFR).

    Parameters
    ----------
    Cs : sequence of float
        Inverse L1 strengths to choose from by cross-validated worst-cell accuracy.
    n_draws : int
        Group-balanced draws whose fitted layers are averaged (the final layer).
    cv_draws : int
        Draws averaged inside each cross-validation fold: enough to rank the C's, a third of
        the fits (10,000 labelled faces repair in seconds).
    cv : int
        Folds of the stratified (by cell) cross-validation that chooses ``C``.
    max_per_cell : int
        At most this many examples per cell in one draw: keeps a fit on thousands of labelled
        examples to seconds.
    random_state : int
        Seeds the folds and the draws.

    Attributes
    ----------
    classes_ : numpy.ndarray
        Class indices seen in ``fit`` (the layer has a row for every class of ``n_classes``).
    mean_, scale_ : numpy.ndarray
        Standardisation of the features, ``(D,)``.
    coef_ : numpy.ndarray
        The new layer's weights on raw features, ``(n_classes, D)``.
    intercept_ : numpy.ndarray
        Its biases, ``(n_classes,)``.
    C_ : float
        The chosen inverse strength.
    cells_ : dict of tuple to int
        Labelled examples per (class, group) cell.
    cv_worst_ : float
        Cross-validated worst-cell accuracy of the new layer.
    old_worst_ : float or None
        Worst-cell accuracy of the old layer on the same examples (None without one).
    cv_cells_, old_cells_ : dict of tuple to float
        Per-cell accuracies behind the two.
    improved_ : bool
        Whether the new layer's cross-validated worst cell is above the old layer's (True
        when there is no old layer to compare with).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 8)); y = (X[:, 0] > 0).astype(int); g = rng.integers(0, 2, 400)
    >>> LastLayerRepair(n_draws=2, cv=3).fit(X, y, g).predict(X[:3]).shape
    (3,)
    """

    def __init__(
        self,
        *,
        Cs: Sequence[float] = CS,  # noqa: N803 (scikit-learn's name)
        n_draws: int = 10,
        cv_draws: int = 3,
        cv: int = 5,
        max_per_cell: int = 500,
        random_state: int = 0,
    ) -> None:
        self.Cs = Cs
        self.n_draws = n_draws
        self.cv_draws = cv_draws
        self.cv = cv
        self.max_per_cell = max_per_cell
        self.random_state = random_state

    def fit(
        self,
        X: np.ndarray,  # noqa: N803
        y: np.ndarray,
        groups: np.ndarray,
        *,
        n_classes: int | None = None,
        old_coef: np.ndarray | None = None,
        old_intercept: np.ndarray | None = None,
    ) -> LastLayerRepair:
        """Choose ``C``, fit the averaged layer, and compare it with the old one.

        Parameters
        ----------
        X : numpy.ndarray
            Features the layer reads, ``(N, D)``.
        y : numpy.ndarray
            Class index of each example, ``(N,)``.
        groups : numpy.ndarray
            Group of each example (any hashable values; combine columns beforehand), ``(N,)``.
        n_classes : int, optional
            Rows of the layer (default: ``max(y) + 1``).
        old_coef, old_intercept : numpy.ndarray, optional
            The layer as it is, ``(n_classes, D)`` and ``(n_classes,)``, to compare against.
        """
        X, y, cell = _checked(X, y, groups)
        self.n_classes_ = int(n_classes or y.max() + 1)
        self.classes_ = np.unique(y)
        self.mean_, self.scale_ = X.mean(0), X.std(0) + 1e-6
        Z = (X - self.mean_) / self.scale_
        keys, cell_index = np.unique(cell, return_inverse=True)
        self.cells_ = {
            tuple(k.split("\x1f")): int(n)
            for k, n in zip(keys, np.bincount(cell_index), strict=True)
        }
        folds = _folds(cell_index, self.cv, self.random_state)
        scores = {C: self._cv_predictions(Z, y, cell_index, folds, C) for C in self.Cs}
        worst = {C: _worst(y == pred, cell_index) for C, pred in scores.items()}
        self.C_ = max(self.Cs, key=lambda C: (worst[C], -abs(np.log(C))))  # ties: nearer 1
        self.cv_cells_ = _cell_accuracy(y == scores[self.C_], cell_index, keys)
        self.cv_worst_ = min(self.cv_cells_.values())
        everyone = np.arange(len(y))
        coef, intercept = self._fit_draws(Z, y, cell_index, self.C_, everyone, 0, self.n_draws)
        self.coef_ = coef / self.scale_  # back on raw features: w·(x - m)/s = (w/s)·x - (w/s)·m
        self.intercept_ = intercept - self.coef_ @ self.mean_
        self.old_worst_, self.old_cells_ = None, {}
        if old_coef is not None:
            old = np.argmax(X @ np.asarray(old_coef).T + np.asarray(old_intercept), axis=1)
            self.old_cells_ = _cell_accuracy(y == old, cell_index, keys)
            self.old_worst_ = min(self.old_cells_.values())
        self.improved_ = self.old_worst_ is None or self.cv_worst_ > self.old_worst_
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Logits of the new layer, ``(N, n_classes)``."""
        _check_is_fitted(self)
        return np.asarray(X, dtype=np.float64) @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """Class index of each example under the new layer, ``(N,)``."""
        return self.decision_function(X).argmax(1)

    def _cv_predictions(
        self, Z: np.ndarray, y: np.ndarray, cell: np.ndarray, folds: np.ndarray, C: float
    ) -> np.ndarray:
        """Each example's class predicted by layers fitted without its fold, ``(N,)``."""
        pred = np.empty(len(y), dtype=np.int64)
        for f in np.unique(folds):
            rows = np.flatnonzero(folds != f)
            coef, intercept = self._fit_draws(Z, y, cell, C, rows, 1 + f, self.cv_draws)
            held = folds == f
            pred[held] = (Z[held] @ coef.T + intercept).argmax(1)
        return pred

    def _fit_draws(
        self,
        Z: np.ndarray,
        y: np.ndarray,
        cell: np.ndarray,
        C: float,
        rows: np.ndarray,
        stream: int,
        draws: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Average the layers fitted on ``draws`` group-balanced draws of ``rows``."""
        rng = np.random.default_rng([self.random_state, stream])
        coef = np.zeros((self.n_classes_, Z.shape[1]))
        intercept = np.zeros(self.n_classes_)
        for _ in range(draws):
            drawn = _balanced_draw(rows, cell[rows], self.max_per_cell, rng)
            c, b = _fit_one(Z[drawn], y[drawn], C, self.n_classes_, _class_weights(y, cell, drawn))
            coef, intercept = coef + c, intercept + b
        return coef / draws, intercept / draws


def cell_labels(y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Return one label per (class, group) cell, ``(N,)`` str."""
    return np.char.add(
        np.char.add(np.asarray(y).astype(str), "\x1f"), np.asarray(groups).astype(str)
    )


def _checked(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, ...]:  # noqa: N803
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    groups = np.asarray(groups)
    errors.check_option(
        X.ndim == 2 and len(X) == len(y) == len(groups) and len(X) > 0,
        "X",
        f"array of shape {X.shape}",
        f"needs one row per label (y has {len(y)}, groups {len(groups)})",
        "Pass features (N, D) with y and groups of length N.",
    )
    errors.check_option(
        bool(np.isfinite(X).all()), "X", "features", "holds NaN or infinite values",
        "Check the model's outputs on these images.",
    )  # fmt: skip
    errors.check_option(
        np.issubdtype(y.dtype, np.integer) and y.min() >= 0, "y", y.dtype,
        "must be class indices (whole numbers from 0)", "Map class names to indices first.",
    )  # fmt: skip
    return X, y, cell_labels(y, groups)


def _folds(cell: np.ndarray, cv: int, seed: int) -> np.ndarray:
    """Fold of each example, stratified by cell (as many folds as the smallest cell allows)."""
    k = int(min(cv, np.bincount(cell).min()))
    errors.check_option(
        k >= 2,
        "groups",
        "cells",
        "a (class, group) cell has a single labelled example: too few to cross-validate",
        "Label at least two examples in every cell (ten or more to judge it).",
    )
    folds = np.empty(len(cell), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(cell)), cell)):
        folds[held] = f
    return folds


def _balanced_draw(
    rows: np.ndarray, cell: np.ndarray, most: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw as many ``rows`` from every cell as the smallest cell has (at most ``most``)."""
    members = [rows[cell == c] for c in np.unique(cell)]
    n = min(most, min(len(m) for m in members))
    return np.concatenate([rng.choice(m, n, replace=False) for m in members])


def _class_weights(y: np.ndarray, cell: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """Weights that give every class the same total in a draw, whatever its number of cells.

    A draw takes as many rows from every cell, so a class with more groups (a detector's faces
    of four races against its one cell of non-faces) would outweigh the others and shift the
    decision towards it: each row is weighed by the inverse of its class's cell count, scaled so
    the weights average 1 (equal cell counts give weight 1 everywhere: nothing changes).
    """
    pairs = np.unique(np.stack([y[drawn], cell[drawn]]), axis=1)  # (2, cells drawn)
    cells_per_class = np.bincount(pairs[0], minlength=int(y.max()) + 1)
    present = cells_per_class > 0
    w = pairs.shape[1] / present.sum() / cells_per_class[y[drawn]]
    return w / w.mean()


def _fit_one(
    Z: np.ndarray,
    y: np.ndarray,
    C: float,
    n_classes: int,  # noqa: N803
    weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One L1 logistic regression as a full layer ``(n_classes, D)``, ``(n_classes,)``."""
    present = np.unique(y)
    coef = np.zeros((n_classes, Z.shape[1]))
    intercept = np.full(n_classes, -1e3)  # a class no example shows is never predicted
    if len(present) == 1:
        intercept[present[0]] = 0.0
        return coef, intercept
    binary = len(present) == 2
    model = LogisticRegression(
        C=C, l1_ratio=1.0, solver="liblinear" if binary else "saga", max_iter=1000, tol=1e-3
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        uniform = weight is None or bool(np.all(weight == 1.0))  # liblinear differs by 1e-4
        model.fit(Z, y, sample_weight=None if uniform else weight)
    if binary:  # one logit difference: split it evenly between the two rows
        coef[present[1]], coef[present[0]] = model.coef_[0] / 2, -model.coef_[0] / 2
        intercept[present] = [-model.intercept_[0] / 2, model.intercept_[0] / 2]
    else:
        coef[present], intercept[present] = model.coef_, model.intercept_
    return coef, intercept


def _cell_accuracy(right: np.ndarray, cell: np.ndarray, keys: np.ndarray) -> dict[tuple, float]:
    return {tuple(k.split("\x1f")): float(right[cell == i].mean()) for i, k in enumerate(keys)}


def _worst(right: np.ndarray, cell: np.ndarray) -> float:
    return float(min(right[cell == c].mean() for c in np.unique(cell)))


def _check_is_fitted(est: LastLayerRepair) -> None:
    if not hasattr(est, "coef_"):
        raise RuntimeError("This LastLayerRepair is not fitted yet; call fit(X, y, groups) first.")
