"""Each group against its attribute's reference group: differences, ratios, flags.

A group passes a metric under the four-fifths rule (Aequitas' parity rule) iff
``tau <= ratio <= 1 / tau``; a difference is *significant* when its bootstrap interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

import numpy as np

from debias import errors
from debias.fairness.bootstrap import interval
from debias.fairness.metrics import JUDGED, MetricKey, metrics_from_counts


@dataclass
class Disparity:
    """One row of the disparity table: a group's metric against the reference group's."""

    attribute: str
    group: str
    reference: str
    n: int
    metric: str
    cls: str
    value: float
    reference_value: float
    difference: float
    difference_ci_low: float
    difference_ci_high: float
    ratio: float
    ratio_ci_low: float
    ratio_ci_high: float
    significant: bool
    flag: str  # pass, fail, too small, undefined


# The table's columns; ``cls`` is written as ``class`` (a Python keyword as a field name).
DISPARITY_COLUMNS = [f.name if f.name != "cls" else "class" for f in fields(Disparity)]


def reference_group(
    attribute: str, names: list[str], sizes: dict[str, int], given: dict[str, str]
) -> str:
    """Return the attribute's reference group: the one given for it, else its largest group."""
    chosen = given.get(attribute)
    if chosen is None:
        return max(names, key=lambda name: (sizes[name], name))
    if chosen not in names:
        raise errors.ConfigError(
            errors.BAD_OPTION.format(
                option="reference",
                value=f"{attribute}={chosen}",
                problem=f"{attribute!r} has no group {chosen!r}",
                fix=f"Choose one of: {', '.join(names)}.",
            )
        )
    return chosen


def disparities(
    attribute: str,
    names: list[str],
    reference: str,
    group_counts: np.ndarray,
    replicates: np.ndarray,
    keys: Sequence[MetricKey],
    *,
    ci: float,
    tau: float,
    min_group_size: int,
    bootstrapped: bool,
) -> list[tuple]:
    """Rows of the disparity table for one attribute (tuples in :data:`DISPARITY_COLUMNS` order).

    Parameters
    ----------
    group_counts : numpy.ndarray
        Confusion counts of each group, ``(V, C, C)``, in the order of ``names``.
    replicates : numpy.ndarray
        Bootstrap replicates of each group's metrics, ``(B, V, M)``.
    keys : sequence of MetricKey
        The metrics, ``(M,)``.
    """
    r = names.index(reference)
    values = metrics_from_counts(group_counts, keys)  # (V, M)
    sizes = group_counts.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff_rep = replicates - replicates[:, r : r + 1]  # (B, V, M)
        ratio_rep = replicates / replicates[:, r : r + 1]
        diff = values - values[r]  # (V, M)
        ratio = values / values[r]
    d_low, d_high = interval(diff_rep, ci)
    r_low, r_high = interval(np.where(np.isfinite(ratio_rep), ratio_rep, np.nan), ci)
    # Where a group holds one true class only (grouping by the target itself, say), its selection
    # rate and precision for that class follow from the labels, not the classifier: not judged.
    base_rate = {k.class_name: m for m, k in enumerate(keys) if k.metric == "base_rate"}
    out = []
    for v, name in enumerate(names):
        if name == reference:
            continue
        for m, key in enumerate(keys):
            if key.metric not in JUDGED:
                continue
            label_bound = key.metric in ("selection_rate", "precision") and any(
                values[g, base_rate[key.class_name]] in (0.0, 1.0) for g in (v, r)
            )
            if min(sizes[v], sizes[r]) < min_group_size:
                flag = "too small"
            elif not np.isfinite(ratio[v, m]) or label_bound:
                flag = "undefined"
            else:
                flag = "pass" if tau <= ratio[v, m] <= 1 / tau else "fail"
            significant = bool(
                bootstrapped and np.isfinite(d_low[v, m]) and (d_low[v, m] > 0 or d_high[v, m] < 0)
            )
            row = Disparity(
                attribute=attribute,
                group=name,
                reference=reference,
                n=int(sizes[v]),
                metric=key.metric,
                cls=key.class_name,
                value=float(values[v, m]),
                reference_value=float(values[r, m]),
                difference=float(diff[v, m]),
                difference_ci_low=float(d_low[v, m]),
                difference_ci_high=float(d_high[v, m]),
                ratio=float(ratio[v, m]) if np.isfinite(ratio[v, m]) else float("nan"),
                ratio_ci_low=float(r_low[v, m]),
                ratio_ci_high=float(r_high[v, m]),
                significant=significant,
                flag=flag,
            )
            out.append(astuple(row))
    return out
