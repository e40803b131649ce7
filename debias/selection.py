"""Label-free model selection: which epoch's weights a run keeps.

By default a run keeps its last epoch: the cosine schedule decays the step to zero, so the last
model is the least noisy. Choosing the epoch by the validation accuracy of the worst *group* is
what most debiasing papers report, and it reads group labels (JTT's CelebA worst group falls from
81.1 with it to 48.3 without). Two scores stand in for it here without reading a group column:

- ``"worst-class"``: the lowest per-class validation accuracy — the class the model neglects;
- ``"worst-cluster"``: the lowest validation accuracy over latent clusters of each class
  (k-means on the class's standardised latent means) — pseudo-groups in the spirit of GEORGE
  (Sohoni et al. 2020), which clusters features to find the groups a model fails.

Every epoch's record carries both scores; the run keeps the weights of the epoch whose score
under its rule is highest (the later one on a tie). Pure arrays in, numbers out, except
:class:`EpochSelection`, which holds a copy of the kept weights for the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans

from debias.config import Select

CLUSTERS_PER_CLASS = 4  # GEORGE's clusters per class are a handful too
MIN_CLUSTER = 10  # a cluster of fewer validation faces is judged by noise: not scored


def worst_class_accuracy(y: np.ndarray, correct: np.ndarray) -> float:
    """Return the lowest accuracy over the classes present in ``y`` ``(N,)``."""
    return float(min(correct[y == c].mean() for c in np.unique(y)))


def worst_cluster_accuracy(
    mu: np.ndarray, y: np.ndarray, correct: np.ndarray, seed: int = 0
) -> float:
    """Return the lowest accuracy over latent clusters of each class.

    Parameters
    ----------
    mu : numpy.ndarray
        Latent means of the validation faces, ``(N, K)``.
    y : numpy.ndarray
        Their classes, ``(N,)``.
    correct : numpy.ndarray
        Whether the model classifies each one right, ``(N,)`` bool.
    seed : int
        Seeds k-means: the same latents give the same clusters.

    Returns
    -------
    float
        The worst accuracy over clusters of at least ``MIN_CLUSTER`` faces; a class too small to
        cluster counts as one cluster.
    """
    worst = 1.0
    for c in np.unique(y):
        members = y == c
        z = mu[members]
        k = min(CLUSTERS_PER_CLASS, len(z) // MIN_CLUSTER)
        if k < 2:
            worst = min(worst, float(correct[members].mean()))
            continue
        z = (z - z.mean(0)) / (z.std(0) + 1e-6)  # every latent dimension counts alike
        label = KMeans(k, n_init=4, random_state=seed).fit_predict(z)
        for cluster in range(k):
            at = label == cluster
            if at.sum() >= MIN_CLUSTER:
                worst = min(worst, float(correct[members][at].mean()))
    return worst


def validation_scores(
    mu: np.ndarray, y: np.ndarray, correct: np.ndarray, seed: int
) -> dict[str, float]:
    """Both selection scores of one epoch's validation predictions, for its record."""
    return {
        "val_worst_class": worst_class_accuracy(y, correct),
        "val_worst_cluster": worst_cluster_accuracy(mu, y, correct, seed),
    }


@dataclass
class EpochSelection:
    """Keeps the weights of the epoch whose validation score under ``rule`` is highest.

    Parameters
    ----------
    rule : {"last", "worst-class", "worst-cluster"}
        ``"last"`` keeps nothing: the run's final weights are its model.

    Attributes
    ----------
    epoch_ : int or None
        The kept epoch, from 0 (None until an epoch was scored, and always with ``"last"``).
    score_ : float or None
        Its score.
    weights_ : dict or None
        A CPU copy of its model's ``state_dict``.
    """

    rule: Select = "last"
    epoch_: int | None = None
    score_: float | None = None
    weights_: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, record: dict[str, Any], model: torch.nn.Module) -> None:
        """Score the epoch just validated (``record``) and keep ``model``'s weights if best."""
        if self.rule == "last":
            return
        score = record.get("val_" + self.rule.replace("-", "_"))
        if score is None:  # no validation split: nothing to choose by
            return
        if self.score_ is None or score >= self.score_:  # a tie goes to the later, longer-trained
            self.epoch_, self.score_ = epoch, float(score)
            self.weights_ = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }

    def state_dict(self) -> dict[str, Any]:
        """Return what the checkpoint keeps, so a resumed run compares with the same best."""
        return {"epoch": self.epoch_, "score": self.score_, "weights": self.weights_}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (an empty dict: nothing kept yet)."""
        self.epoch_, self.score_ = state.get("epoch"), state.get("score")
        self.weights_ = state.get("weights")
