"""Two classifiers audited on the same images: each group's accuracy before and after, paired.

Both models predicted the same rows, so the change in a group's accuracy is estimated by
resampling the rows once for both (a paired bootstrap): each row's outcome is the pair (right
before, right after), and a cell's four pair counts are redrawn as the audit redraws its confusion
counts. The interval is the images' uncertainty, with the correlation between the two models'
errors taken into account; it says nothing about training randomness, which one run per model
cannot measure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from debias.fairness.audit import (
    AuditOptions,
    attribute_values,
    attributes_of,
    finest_cells,
    sensitive_frame,
)
from debias.fairness.bootstrap import bootstrap_counts, cell_counts, interval
from debias.fairness.groups import suitable_groups

WORST = "worst group"  # the row comparing the two models' worst judged groups
CHANGE_COLUMNS = ["attribute", "group", "n", "judged", "before", "after", "change"]
CHANGE_COLUMNS += ["ci_low", "ci_high", "significant"]


def paired_changes(
    y_true: Sequence[object],
    before: Sequence[object],
    after: Sequence[object],
    sensitive_features: object = None,
    options: AuditOptions | None = None,
) -> pd.DataFrame:
    """Accuracy before and after, and its change with a paired bootstrap interval, per group.

    Parameters
    ----------
    y_true : array-like
        True class of each row.
    before, after : array-like
        The two models' predictions on the same rows (a baseline, then the debiased model).
    sensitive_features : array-like, Series, DataFrame or dict, optional
        Group attributes, as :func:`debias.fairness.audit.audit` takes them.
    options : AuditOptions, optional
        Its ``groups``, ``bootstrap``, ``ci``, ``min_group_size`` and ``seed`` are read.

    Returns
    -------
    pandas.DataFrame
        A row for ``overall``, each group and intersection, and a last row (``"worst group"``)
        for each model's lowest judged group accuracy (``group`` names both): ``before``,
        ``after``, ``change`` and its interval, ``significant`` when it excludes 0.
    """
    options = options or AuditOptions()
    frame = sensitive_frame(sensitive_features, len(y_true))
    names = options.groups or suitable_groups(frame, list(frame.columns))
    truth = pd.Series(y_true).astype(str).to_numpy()
    right_before = (pd.Series(before).astype(str).to_numpy() == truth).astype(np.int64)
    right_after = (pd.Series(after).astype(str).to_numpy() == truth).astype(np.int64)
    cells, cell_groups = finest_cells(frame, names)
    counts = cell_counts(cells, right_before, right_after, len(cell_groups) or 1, 2)  # (G, 2, 2)
    rng = np.random.default_rng(options.seed)
    boot = bootstrap_counts(counts, options.bootstrap, rng)  # (B, G, 2, 2)

    labels, member = _rows_of(cell_groups, names)  # (R,), (R, G)
    sizes = np.einsum("rg,gij->r", member, counts)
    point = _accuracies(np.einsum("rg,gij->rij", member, counts))  # (2, R)
    replicates = _accuracies(np.einsum("rg,bgij->brij", member, boot))  # (2, B, R)

    judged = sizes >= options.min_group_size
    rows = [
        _row(
            attribute,
            group,
            int(sizes[r]),
            bool(judged[r]),
            point[:, r],
            replicates[:, :, r],
            options.ci,
        )  # fmt: skip
        for r, (attribute, group) in enumerate(labels)
    ]
    groups = np.flatnonzero(judged & (np.arange(len(labels)) > 0))
    if len(groups):
        rows.append(_worst_row(labels, groups, int(sizes[0]), point, replicates, options.ci))
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def _rows_of(cell_groups: pd.DataFrame, names: Sequence[str]) -> tuple[list[tuple], np.ndarray]:
    """Return the table's rows (overall, then every group) and which cells each holds (R, G)."""
    labels = [("overall", "all")]
    members = [np.ones(len(cell_groups) or 1, dtype=np.int64)]
    for attribute in attributes_of(names):
        value = attribute_values(cell_groups, attribute)
        for name in sorted(set(value) - {""}):
            labels.append((attribute, name))
            members.append((value == name).astype(np.int64))
    return labels, np.stack(members)


def _worst_row(
    labels: list[tuple],
    groups: np.ndarray,
    n: int,
    point: np.ndarray,
    replicates: np.ndarray,
    ci: float,
) -> tuple:
    """Each model's worst judged group, in the data and in every replicate, as one row."""
    worst = point[:, groups].min(axis=1)
    worst_rep = np.nanmin(replicates[:, :, groups], axis=2)
    which = [f"{labels[groups[i]][0]} = {labels[groups[i]][1]}" for i in
             point[:, groups].argmin(axis=1)]  # fmt: skip
    return _row(WORST, " -> ".join(which), n, True, worst, worst_rep, ci)


def _accuracies(counts: np.ndarray) -> np.ndarray:
    """Before and after accuracy from pair counts ``(..., 2, 2)`` [right before, right after]."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = counts.sum(axis=(-2, -1))
        return np.stack([counts[..., 1, :].sum(axis=-1) / n, counts[..., :, 1].sum(axis=-1) / n])


def _row(
    attribute: str,
    group: str,
    n: int,
    judged: bool,
    point: np.ndarray,
    replicates: np.ndarray,
    ci: float,
) -> tuple:
    """One table row from the (before, after) point estimates and their replicates ``(2, B)``."""
    change = point[1] - point[0]
    low, high = interval(replicates[1] - replicates[0], ci)
    significant = bool(np.isfinite(low) and (low > 0 or high < 0))
    return (attribute, group, n, judged, float(point[0]), float(point[1]), float(change),
            float(low), float(high), significant)  # fmt: skip
