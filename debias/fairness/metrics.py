"""Every audit metric as a function of a group's confusion counts, in one keyed table.

A metric is a :class:`MetricKey` — its name and, for one-vs-rest rates, the class it is about.
:func:`metric_keys` lists them in the order :func:`metrics_from_counts` computes them, so code
looks a metric up by its key, never by position arithmetic. Point estimates also come from
fairlearn's ``MetricFrame`` (:func:`metric_frame`); a test checks the two agree value for value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score

# Metrics judged per group: ours and the rest of Aequitas's (selection_rate is its "predicted
# prevalence"; tnr, npv, fdr and for_ are its TNR, NPV, FDR and FOR). ``count`` and
# ``base_rate`` describe the data, not the classifier, so they get no four-fifths flag.
RATE_METRICS = ("selection_rate", "tpr", "fpr", "fnr", "precision", "tnr", "npv", "fdr", "for_")
# Which way is better for a group: higher (+1), lower (-1), or neither (0: a selection rate is a
# decision's frequency, good or bad only by what the decision is).
BETTER = {"accuracy": 1, "tpr": 1, "tnr": 1, "precision": 1, "npv": 1}
BETTER |= {"fpr": -1, "fnr": -1, "fdr": -1, "for_": -1, "selection_rate": 0}
PER_CLASS = ("base_rate", *RATE_METRICS)  # one-vs-rest, one of each per judged class
METRICS = ("count", "accuracy", *PER_CLASS)
JUDGED = ("accuracy", *RATE_METRICS)


class MetricKey(NamedTuple):
    """One column of the metric table: a metric and the class it is one-vs-rest about."""

    metric: str
    class_name: str  # "" for count and accuracy
    class_index: int  # -1 for count and accuracy

    @property
    def code(self) -> str:
        """The key's name in the MetricFrame: ``metric@class_index`` (``metric@`` for none)."""
        return f"{self.metric}@{self.class_index if self.class_index >= 0 else ''}"


def metric_keys(classes: Sequence[str], judged: Sequence[int]) -> list[MetricKey]:
    """Return the metric table's keys, in the order of :func:`metrics_from_counts`'s last axis."""
    keys = [MetricKey("count", "", -1), MetricKey("accuracy", "", -1)]
    for c in judged:
        keys += [MetricKey(name, classes[c], c) for name in PER_CLASS]
    return keys


def _rates(confusion: np.ndarray, c: int) -> dict[str, np.ndarray]:
    """One-vs-rest metrics of class ``c`` from confusion counts ``(..., C, C)`` [true, pred].

    A rate whose denominator is 0 (no positives in a group, say) is NaN: undefined, not 0.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        n = confusion.sum(axis=(-2, -1))
        tp = confusion[..., c, c]
        positives = confusion[..., c, :].sum(axis=-1)
        predicted = confusion[..., :, c].sum(axis=-1)
        fp, fn = predicted - tp, positives - tp
        tn = n - positives - fp
        return {
            "base_rate": positives / n,
            "selection_rate": predicted / n,
            "tpr": tp / positives,
            "fpr": fp / (n - positives),
            "fnr": fn / positives,
            "precision": tp / predicted,
            "tnr": tn / (n - positives),
            "npv": tn / (n - predicted),
            "fdr": fp / predicted,
            "for_": fn / (n - predicted),
        }


def metrics_from_counts(confusion: np.ndarray, keys: Sequence[MetricKey]) -> np.ndarray:
    """Every metric of ``keys`` from confusion counts ``(..., C, C)``; returns ``(..., M)``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = confusion.sum(axis=(-2, -1)).astype(np.float64)
        accuracy = np.trace(confusion, axis1=-2, axis2=-1) / n
    rates = {c: _rates(confusion, c) for c in {k.class_index for k in keys if k.class_index >= 0}}
    whole = {"count": n, "accuracy": accuracy}  # the two metrics about no one class
    columns = [
        whole[k.metric] if k.class_index < 0 else rates[k.class_index][k.metric] for k in keys
    ]
    return np.stack(columns, axis=-1)


def _weighted_count(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.sum(sample_weight))


def _fairlearn_metric(key: MetricKey) -> Callable[..., float]:
    """Return the MetricFrame function of one key, on class indices."""
    c = key.class_index
    if key.metric == "count":
        return _weighted_count
    if key.metric == "accuracy":
        return accuracy_score
    if key.metric == "base_rate":
        return lambda yt, yp, sample_weight: selection_rate(
            yt == c, yt == c, pos_label=True, sample_weight=sample_weight
        )
    if key.metric in ("precision", "npv", "fdr", "for_"):
        # fairlearn has none of these four: each is a precision (of "is c" or of "is not c")
        # or its complement, so scikit-learn's precision computes them.
        positive = key.metric in ("precision", "fdr")
        complement = key.metric in ("fdr", "for_")

        def precision_like(yt, yp, sample_weight):
            p = precision_score(
                (yt == c) == positive,
                (yp == c) == positive,
                sample_weight=sample_weight,
                zero_division=np.nan,
            )
            return 1 - p if complement else p

        return precision_like
    fn = {
        "selection_rate": selection_rate,
        "tpr": true_positive_rate,
        "tnr": true_negative_rate,
        "fpr": false_positive_rate,
        "fnr": false_negative_rate,
    }[key.metric]
    return lambda yt, yp, sample_weight: fn(
        yt == c, yp == c, pos_label=True, sample_weight=sample_weight
    )


def metric_frame(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sensitive: pd.DataFrame | pd.Series,
    keys: Sequence[MetricKey],
    weight: np.ndarray | None = None,
) -> MetricFrame:
    """Return fairlearn's MetricFrame of ``keys`` (columns named by :attr:`MetricKey.code`).

    ``weight`` makes each row stand for that many identical predictions: the audit passes one row
    per (group cell, true class, predicted class) weighted by its count, which gives the same
    values as the raw rows at a cost independent of their number.
    """
    metrics = {key.code: _fairlearn_metric(key) for key in keys}
    weight = np.ones(len(y_true)) if weight is None else weight
    return MetricFrame(
        metrics=metrics,
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sensitive,
        sample_params={name: {"sample_weight": weight} for name in metrics},
    )
