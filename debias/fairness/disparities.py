"""Each group against its attribute's reference group: differences, ratios, flags.

A group passes a metric under the four-fifths rule (Aequitas' parity rule) iff
``tau <= ratio <= 1 / tau``; a difference is *significant* when its bootstrap interval excludes 0
(or, with a multiple-comparison correction, when its corrected p-value is below ``1 - ci``).
A failure is only half a fact without its direction: ``direction`` says whether the group is worse
or better off than the reference on that metric.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

import numpy as np
import pandas as pd
from scipy.special import erfc

from debias import errors
from debias.fairness.bootstrap import interval
from debias.fairness.metrics import BETTER, JUDGED, MetricKey, metrics_from_counts

# Where a group holds one true class only (grouping by the target itself, say), these metrics
# follow from the labels, not the classifier: not judged.
LABEL_BOUND = ("selection_rate", "precision", "npv", "fdr", "for_")


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
    p_value: float  # two-sided bootstrap p-value of the difference (corrected if asked)
    significant: bool
    direction: str  # worse, better (than the reference), higher, lower (no better side), ""
    flag: str  # pass, fail, too small, undefined
    duplicate_of: str  # "attribute = group" of an earlier row stating the same fact, or ""


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
    numbers = _comparisons(values, replicates, r, ci, bootstrapped)
    base_rate = {k.class_name: m for m, k in enumerate(keys) if k.metric == "base_rate"}
    out = []
    for v, name in enumerate(names):
        for m, key in enumerate(keys):
            if name == reference or key.metric not in JUDGED:
                continue
            label_bound = key.metric in LABEL_BOUND and any(
                values[g, base_rate[key.class_name]] in (0.0, 1.0) for g in (v, r)
            )
            too_small = min(sizes[v], sizes[r]) < min_group_size
            low, high = numbers["difference_ci_low"][v, m], numbers["difference_ci_high"][v, m]
            row = Disparity(
                attribute=attribute,
                group=name,
                reference=reference,
                n=int(sizes[v]),
                metric=key.metric,
                cls=key.class_name,
                **{column: float(table[v, m]) for column, table in numbers.items()},
                significant=bootstrapped and _excludes_zero(low, high),
                direction=_direction(key.metric, numbers["difference"][v, m]),
                flag=_flag(numbers["ratio"][v, m], tau, too_small, label_bound),
                duplicate_of="",
            )
            out.append(astuple(row))
    return out


def _comparisons(
    values: np.ndarray, replicates: np.ndarray, r: int, ci: float, bootstrapped: bool
) -> dict[str, np.ndarray]:
    """Each group against group ``r``: the table's numeric columns, ``(V, M)`` each, by field."""
    with np.errstate(invalid="ignore", divide="ignore"):
        diff_rep = replicates - replicates[:, r : r + 1]  # (B, V, M)
        ratio_rep = replicates / replicates[:, r : r + 1]
        diff = values - values[r]  # (V, M)
        ratio = values / values[r]
    d_low, d_high = interval(diff_rep, ci)
    r_low, r_high = interval(np.where(np.isfinite(ratio_rep), ratio_rep, np.nan), ci)
    p_values = bootstrap_p_value(diff, diff_rep) if bootstrapped else np.full_like(diff, np.nan)
    return dict(
        value=values,
        reference_value=np.broadcast_to(values[r], values.shape),
        difference=diff,
        difference_ci_low=d_low,
        difference_ci_high=d_high,
        ratio=np.where(np.isfinite(ratio), ratio, np.nan),
        ratio_ci_low=r_low,
        ratio_ci_high=r_high,
        p_value=p_values,
    )


def _flag(ratio: float, tau: float, too_small: bool, label_bound: bool) -> str:
    """Return a comparison's verdict: ``too small`` or ``undefined``, else the ratio rule's."""
    if too_small:
        return "too small"
    if not np.isfinite(ratio) or label_bound:
        return "undefined"
    return "pass" if tau <= ratio <= 1 / tau else "fail"


def _excludes_zero(low: float, high: float) -> bool:
    """Whether a difference's interval lies wholly on one side of zero (significant)."""
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))


def _direction(metric: str, difference: float) -> str:
    """Whether a group is worse or better off than its reference on a metric (by the sign)."""
    if not np.isfinite(difference) or difference == 0:
        return ""
    better = BETTER[metric]
    if better == 0:
        return "higher" if difference > 0 else "lower"
    return "better" if difference * better > 0 else "worse"


def bootstrap_p_value(difference: np.ndarray, replicates: np.ndarray) -> np.ndarray:
    """Two-sided p-value of "the difference is 0": a Wald test with the bootstrap's spread.

    ``2 * (1 - Phi(|d| / sd))`` with ``sd`` the standard deviation of the replicates ``(B, ...)``.
    Tail counts of the replicates cannot go below ``2 / (B + 1)``, which a correction for a
    hundred comparisons would turn into "never significant"; the normal approximation can.
    """
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicates: an undefined p
        spread = np.nanstd(replicates, axis=0, ddof=1)
        z = np.abs(difference) / spread
        p = erfc(z / np.sqrt(2))
    return np.where(np.isfinite(difference) & (spread > 0), p, np.nan)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted as a test).

    Holm controls the family-wise error rate under any dependence between the tests, which suits
    disparities that share a reference group and overlapping groups.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))  # adjusted values never decrease
        out[i] = running
    return out


def mark_duplicates(table: pd.DataFrame) -> pd.Series:
    """For each disparity row, the earlier row that states the same fact, or "".

    When every positive of a group is also in a finer group (all positives are men, say), the
    race-level FNR and the race & male FNR are one fact measured twice: same metric, same values,
    same bootstrap interval. Counting it twice would inflate the headline.
    """
    key = table[["metric", "class"]].astype(str).copy()
    for column in ("value", "reference_value", "difference_ci_low", "difference_ci_high"):
        key[column] = table[column].round(12).astype(str)
    # A zero-width interval (two groups both always right, say) matches by coincidence, not
    # because the rows are one fact: only rows with a real interval can repeat each other.
    width = table["difference_ci_high"] - table["difference_ci_low"]
    first = ~key.duplicated(keep="first") | ~(width > 0)
    origin = (table["attribute"] + " = " + table["group"]).where(first)
    ids = key.apply(tuple, axis=1)
    first_of = dict(zip(ids[first], origin[first], strict=True))
    return pd.Series(
        ["" if f else first_of[i] for i, f in zip(ids, first, strict=True)], index=table.index
    )
