"""The fairness audit: per-group metrics, bootstrap confidence intervals and disparities.

Point estimates come from fairlearn's ``MetricFrame``. Confidence intervals come from a bootstrap
that resamples *counts*, not rows: every row falls into one cell (its combination of group values)
and one outcome (its true and predicted class), so a bootstrap replicate of a cell is a multinomial
draw of its outcome counts. That is the same distribution as resampling the cell's rows, at a cost
independent of the number of rows (1,000,000 predictions x 1,000 replicates in well under a
second). Cells keep their size in every replicate (a stratified bootstrap), so no group ever comes
out empty. Every metric here is a function of a group's confusion counts, which is what makes
this exact; a test checks the count formulas against ``MetricFrame`` value for value.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score

from debias import errors
from debias.config import check_option

# Metrics judged per group. ``count`` and ``base_rate`` describe the data, not the classifier,
# so they get no four-fifths flag.
RATE_METRICS = ("selection_rate", "tpr", "fpr", "fnr", "precision")
METRICS = ("count", "base_rate", "accuracy", *RATE_METRICS)
JUDGED = ("accuracy", *RATE_METRICS)
INTERSECTION = " & "  # joins attribute names and their values for the intersection


@dataclass
class AuditConfig:
    """Everything that defines an audit; saved in ``audit.json`` with its results.

    Attributes
    ----------
    model : str or None
        What to audit: a debias run folder, a TorchScript file or an ONNX file (with ``data``) ...
    predictions : str or None
        ... or a CSV of predictions already made (``y_true``, ``y_pred`` or ``score``, groups).
    data, labels, target : str or None
        The audited images and their labels and groups, in any layout ``debias train`` reads.
    split : str or None
        Audit only this split of a data set with a partition (CelebA: ``test``).
    image_size : int or None
        Input side of an external model (default: what the file says, else 64).
    mean, std : list of float or None
        Per-channel input normalisation of an external model (default 0 and 1).
    classes : list of str or None
        An external model's class names in output order (default: the data's, sorted).
    embed_with : str or None
        A DB-VAE run whose encoder embeds the images for label-free slices (default: ``model``
        when it is a run).
    threshold : float
        Decision threshold on a predictions CSV's ``score``.
    groups : list of str
        Attribute columns to audit by (default: every suitable one); their intersection is
        audited too when there are two or more.
    reference : dict of str to str
        Reference group per attribute; an attribute not listed uses its largest group.
    bootstrap : int
        Bootstrap replicates for the confidence intervals (0 turns them off).
    ci : float
        Confidence level of the intervals.
    tau : float
        Four-fifths rule threshold: a group passes a metric iff ``tau <= ratio <= 1 / tau``.
    min_group_size : int
        Smaller groups are reported but marked too small to judge.
    pos_label : str or None
        The positive class of a binary target (default: see :func:`positive_class`).
    slices : int
        Number of latent clusters for label-free slice discovery.
    seed : int
        Seed of the bootstrap and the clustering.
    device : str
        Where models run: auto, cpu, cuda, mps.
    out : str or None
        Output folder (default ``reports/audit-<date-time>``).
    """

    model: str | None = None
    predictions: str | None = None
    data: str | None = None
    labels: str | None = None
    target: str | None = None
    split: str | None = None
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None
    embed_with: str | None = None
    threshold: float = 0.5
    groups: list[str] = field(default_factory=list)
    reference: dict[str, str] = field(default_factory=dict)
    bootstrap: int = 1000  # percentile interval ends are stable to about +-0.005 at 1000
    ci: float = 0.95
    tau: float = 0.8  # the four-fifths rule of the US EEOC guidelines
    min_group_size: int = 30  # below 30, a 95% interval on an accuracy is wider than +-0.15
    pos_label: str | None = None
    slices: int = 8  # enough to isolate a 5-10% subgroup, few enough to read
    seed: int = 0
    device: str = "auto"
    out: str | None = None

    def validate(self) -> None:
        """Raise ConfigError on an out-of-range option."""
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise errors.ConfigError(
                    errors.BAD_OPTION.format(
                        option=name,
                        value=",".join(map(str, value)),
                        problem="needs three numbers (R,G,B)"
                        + (", all > 0" if name == "std" else ""),
                        fix="Use e.g. 0.485,0.456,0.406 and 0.229,0.224,0.225.",
                    )
                )
        checks = (
            ("bootstrap", self.bootstrap >= 0, "use 0 (no intervals) or more replicates"),
            ("ci", 0 < self.ci < 1, "use a level between 0 and 1, such as 0.95"),
            ("tau", 0 < self.tau <= 1, "use a threshold in (0, 1], such as 0.8"),
            ("min-group-size", self.min_group_size >= 1, "use 1 or more"),
            ("slices", self.slices >= 1, "use 1 or more"),
            ("image-size", self.image_size is None or self.image_size >= 8, "use 8 or more"),
        )
        for option, ok, fix in checks:
            value = getattr(self, option.replace("-", "_"))
            check_option(ok, option, value, "out of range", fix.capitalize())

    def to_dict(self) -> dict[str, Any]:
        """Return the options as plain JSON values."""
        return dataclasses.asdict(self)


@dataclass
class AuditResult:
    """What :func:`audit` returns.

    Attributes
    ----------
    by_group : pandas.DataFrame
        One row per (attribute, group, metric, class): ``n``, ``value``, ``ci_low``, ``ci_high``,
        ``judged`` (False when the group is smaller than ``min_group_size``). The overall row has
        attribute ``"overall"``.
    disparities : pandas.DataFrame
        One row per (attribute, group, metric, class) against the attribute's reference group:
        ``difference`` and ``ratio`` with intervals, ``flag`` (pass, fail, too small, undefined)
        and ``significant`` (the difference's interval excludes 0).
    classes : list of str
    pos_label : str or None
        Positive class of a binary target; None for multi-class (rates are one-vs-rest).
    config : AuditConfig
    """

    by_group: pd.DataFrame
    disparities: pd.DataFrame
    classes: list[str]
    pos_label: str | None
    config: AuditConfig
    n: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Return the worst judged group by accuracy, the largest disparity, and the flag counts."""
        groups = self.by_group[
            (self.by_group.metric == "accuracy")
            & self.by_group.judged
            & (self.by_group.attribute != "overall")
        ]
        worst = groups.sort_values("value").head(1).to_dict("records")
        judged = self.disparities[self.disparities.flag.isin(["pass", "fail"])]
        largest = judged.reindex(judged.difference.abs().sort_values(ascending=False).index)
        failing = self.disparities[self.disparities.flag == "fail"]
        return {
            "worst_group": worst[0] if worst else None,
            "largest_disparity": largest.head(1).to_dict("records")[0] if len(largest) else None,
            "failing": len(failing),
            "judged": len(judged),
        }


def positive_class(classes: Sequence[str], pos_label: str | None = None) -> str | None:
    """Return the positive class of a binary target, or None for multi-class.

    ``pos_label`` if given, else the first of 1, true, yes, positive, face found, else the second
    class in sorted order (scikit-learn's convention for binary labels).
    """
    if pos_label is not None:
        if pos_label not in classes:
            raise errors.ConfigError(
                errors.BAD_OPTION.format(
                    option="pos-label",
                    value=pos_label,
                    problem="not one of the classes",
                    fix=f"Choose one of: {', '.join(classes)}.",
                )
            )
        return pos_label
    if len(classes) != 2:
        return None
    for name in ("1", "true", "True", "yes", "positive", "face"):
        if name in classes:
            return name
    return sorted(classes)[1]


# ---------------------------------------------------------------------------------------------
# Metrics from confusion counts (for the bootstrap) and through MetricFrame (for the estimates)


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
        return {
            "base_rate": positives / n,
            "selection_rate": predicted / n,
            "tpr": tp / positives,
            "fpr": fp / (n - positives),
            "fnr": fn / positives,
            "precision": tp / predicted,
        }


def metrics_from_counts(confusion: np.ndarray, classes_judged: Sequence[int]) -> np.ndarray:
    """Every metric of :data:`METRIC_KEYS` order from confusion counts ``(..., C, C)``.

    Returns ``(..., M)`` with M = 2 + 6 x len(classes_judged): count, accuracy, then the six
    one-vs-rest metrics of each judged class.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        n = confusion.sum(axis=(-2, -1)).astype(np.float64)
        accuracy = np.trace(confusion, axis1=-2, axis2=-1) / n
    columns = [n, accuracy]
    for c in classes_judged:
        rates = _rates(confusion, c)
        columns += [rates[name] for name in ("base_rate", *RATE_METRICS)]
    return np.stack(columns, axis=-1)


def metric_keys(classes: Sequence[str], judged: Sequence[int]) -> list[tuple[str, str]]:
    """(metric, class) pairs in the order of :func:`metrics_from_counts`."""
    keys = [("count", ""), ("accuracy", "")]
    for c in judged:
        keys += [(name, classes[c]) for name in ("base_rate", *RATE_METRICS)]
    return keys


def _weighted_count(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.sum(sample_weight))


def _fairlearn_metrics(judged: Sequence[int]) -> dict[str, Callable[..., float]]:
    """MetricFrame metrics on class indices, keyed like :func:`metric_keys` (joined by '@')."""
    metrics: dict[str, Callable[..., float]] = {
        "count@": _weighted_count,
        "accuracy@": accuracy_score,
    }
    for c in judged:

        def one_vs_rest(fn: Callable[..., float], c: int = c) -> Callable[..., float]:
            return lambda yt, yp, sample_weight: fn(
                yt == c, yp == c, pos_label=True, sample_weight=sample_weight
            )

        metrics[f"base_rate@{c}"] = lambda yt, yp, sample_weight, c=c: selection_rate(
            yt == c, yt == c, pos_label=True, sample_weight=sample_weight
        )
        metrics[f"selection_rate@{c}"] = one_vs_rest(selection_rate)
        metrics[f"tpr@{c}"] = one_vs_rest(true_positive_rate)
        metrics[f"fpr@{c}"] = one_vs_rest(false_positive_rate)
        metrics[f"fnr@{c}"] = one_vs_rest(false_negative_rate)
        metrics[f"precision@{c}"] = lambda yt, yp, sample_weight, c=c: precision_score(
            yt == c, yp == c, sample_weight=sample_weight, zero_division=np.nan
        )
    return metrics


def metric_frame(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sensitive: pd.DataFrame | pd.Series,
    judged: Sequence[int],
    weight: np.ndarray | None = None,
) -> MetricFrame:
    """Return fairlearn's MetricFrame of every audit metric, by the groups in ``sensitive``.

    ``weight`` makes each row stand for that many identical predictions: the audit passes one row
    per (group cell, true class, predicted class) weighted by its count, which gives the same
    values as the raw rows at a cost independent of their number.
    """
    metrics = _fairlearn_metrics(judged)
    weight = np.ones(len(y_true)) if weight is None else weight
    return MetricFrame(
        metrics=metrics,
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=sensitive,
        sample_params={name: {"sample_weight": weight} for name in metrics},
    )


# ---------------------------------------------------------------------------------------------
# The bootstrap over counts


def cell_counts(cells: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_cells: int, c: int):
    """Confusion counts ``(n_cells, C, C)`` of rows in cells ``cells`` (codes 0..n_cells-1)."""
    flat = (cells * c + y_true) * c + y_pred
    return np.bincount(flat, minlength=n_cells * c * c).reshape(n_cells, c, c)


def bootstrap_counts(
    counts: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 250
) -> np.ndarray:
    """``n_boot`` stratified bootstrap replicates of confusion counts ``(G, C, C)``.

    Each cell's outcome counts are redrawn from a multinomial with the cell's size and its observed
    outcome frequencies: the distribution of the counts after resampling the cell's rows.

    Returns
    -------
    numpy.ndarray
        ``(n_boot, G, C, C)`` int64.
    """
    g, c, _ = counts.shape
    flat = counts.reshape(g, c * c)
    sizes = flat.sum(axis=1)
    pvals = flat / np.maximum(sizes, 1)[:, None]
    out = np.empty((n_boot, g, c * c), dtype=np.int64)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        out[start : start + b] = rng.multinomial(sizes, pvals, size=(b, g))
    return out.reshape(n_boot, g, c, c)


def _interval(replicates: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring replicates where the value is undefined."""
    if len(replicates) == 0:
        nan = np.full(replicates.shape[1:], np.nan)
        return nan, nan
    with warnings.catch_warnings():
        # An undefined metric in every replicate gives an undefined interval, not a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(replicates, [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return low, high


# ---------------------------------------------------------------------------------------------
# The audit


def attributes_of(groups: Sequence[str]) -> list[str]:
    """Audited attributes: each group column, and their intersection when there are several."""
    return [*groups, INTERSECTION.join(groups)] if len(groups) > 1 else list(groups)


def _attribute_values(cells: pd.DataFrame, attribute: str) -> np.ndarray:
    """Each cell's value of an attribute (intersections join values); '' where one is missing."""
    parts = attribute.split(INTERSECTION)
    joined = cells[parts[0]]
    for part in parts[1:]:
        joined = joined + INTERSECTION + cells[part]
    missing = (cells[parts] == "").any(axis=1)
    return joined.where(~missing, "").to_numpy(dtype=object)


def _codes(values: Sequence[object], classes: list[str], what: str) -> np.ndarray:
    codes = pd.Index(classes).get_indexer(pd.Series(values).astype(str))
    if (codes < 0).any():
        unknown = pd.Series(values).astype(str)[codes < 0].iloc[0]
        raise errors.DataError(
            f"{what} has the value {unknown!r}, which is not one of the classes "
            f"({', '.join(classes)}). Use the same class names for true and predicted labels."
        )
    return codes.astype(np.int64)


def audit(
    y_true: Sequence[object],
    y_pred: Sequence[object],
    groups: pd.DataFrame,
    config: AuditConfig,
    classes: Sequence[str] | None = None,
) -> AuditResult:
    """Audit predictions per group, per intersection and overall.

    Parameters
    ----------
    y_true, y_pred : sequence
        True and predicted class of each row (compared as text).
    groups : pandas.DataFrame
        One column per attribute in ``config.groups``, one row per prediction; '' is missing
        (the row counts overall but in no group of that attribute).
    config : AuditConfig
    classes : sequence of str, optional
        All class names (default: those seen in ``y_true`` and ``y_pred``).

    Returns
    -------
    AuditResult

    Examples
    --------
    >>> import pandas as pd
    >>> g = pd.DataFrame({"skin": ["dark"] * 40 + ["light"] * 60})
    >>> y = ["face"] * 100
    >>> p = ["not_face"] * 20 + ["face"] * 80
    >>> r = audit(y, p, g, AuditConfig(groups=["skin"], bootstrap=100))
    >>> r.summary()["worst_group"]["group"]
    'dark'
    """
    config.validate()
    if classes is None:
        seen = pd.concat([pd.Series(y_true), pd.Series(y_pred)]).astype(str).unique()
        classes = sorted(seen.tolist())
    classes = [str(c) for c in classes]
    yt = _codes(y_true, classes, "y_true")
    yp = _codes(y_pred, classes, "y_pred")
    pos = positive_class(classes, config.pos_label)
    judged = [classes.index(pos)] if pos is not None else list(range(len(classes)))
    keys = metric_keys(classes, judged)
    c = len(classes)
    rng = np.random.default_rng(config.seed)

    # Finest cells: every combination of the attributes' values. Each attribute's groups and the
    # overall row are sums of cells, so one set of bootstrap replicates serves them all.
    frame = groups[config.groups].reset_index(drop=True).astype(str)
    if config.groups:
        codes = [pd.factorize(frame[g])[0] for g in config.groups]
        cells, _ = pd.factorize(pd.MultiIndex.from_arrays(codes))
    else:
        cells = np.zeros(len(yt), dtype=np.int64)
    n_cells = int(cells.max()) + 1 if len(cells) else 1
    first_row = pd.Series(np.arange(len(cells))).groupby(cells).first().to_numpy()
    cell_groups = frame.iloc[first_row].reset_index(drop=True)  # (G, attributes)
    counts = cell_counts(cells, yt, yp, n_cells, c)  # (G, C, C)
    boot = bootstrap_counts(counts, config.bootstrap, rng)  # (B, G, C, C)

    # The frequency-weighted outcome table that MetricFrame reads: one row per nonzero count.
    g_idx, t_idx, p_idx = np.nonzero(counts)
    weight = counts[g_idx, t_idx, p_idx].astype(np.float64)

    everyone = np.zeros(len(g_idx), dtype=np.int64)
    overall = metric_frame(t_idx, p_idx, pd.Series(everyone, name="overall"), judged, weight)
    rows = _group_rows(
        "overall",
        "all",
        overall.overall,
        counts.sum(axis=0),
        metrics_from_counts(boot.sum(axis=1), judged),
        keys,
        config,
        judged,
    )
    disparity_rows: list[dict[str, Any]] = []
    for attribute in attributes_of(config.groups):
        cell_value = _attribute_values(cell_groups, attribute)  # (G,)
        names = sorted(set(cell_value) - {""})
        if not names:
            continue
        row_value = cell_value[g_idx]
        present = row_value != ""
        by_group = metric_frame(
            t_idx[present],
            p_idx[present],
            pd.Series(row_value[present], name=attribute),
            judged,
            weight[present],
        ).by_group
        member = (cell_value[None, :] == np.array(names, dtype=object)[:, None]).astype(np.int64)
        group_counts = np.einsum("vg,gij->vij", member, counts)  # (V, C, C)
        replicates = metrics_from_counts(np.einsum("vg,bgij->bvij", member, boot), judged)
        for v, name in enumerate(names):
            rows += _group_rows(
                attribute,
                name,
                by_group.loc[name],
                group_counts[v],
                replicates[:, v],
                keys,
                config,
                judged,
            )
        sizes = {name: int(group_counts[v].sum()) for v, name in enumerate(names)}
        reference = _reference(attribute, names, sizes, config)
        disparity_rows += _disparity_rows(
            attribute, names, reference, replicates, group_counts, keys, sizes, config, judged
        )
    by_group_frame = pd.DataFrame(rows, columns=BY_GROUP_COLUMNS)
    disparities = pd.DataFrame(disparity_rows, columns=DISPARITY_COLUMNS)
    return AuditResult(by_group_frame, disparities, classes, pos, config, n=len(yt))


BY_GROUP_COLUMNS = [
    "attribute",
    "group",
    "n",
    "judged",
    "metric",
    "class",
    "value",
    "ci_low",
    "ci_high",
]
DISPARITY_COLUMNS = [
    "attribute",
    "group",
    "reference",
    "n",
    "metric",
    "class",
    "value",
    "reference_value",
    "difference",
    "difference_ci_low",
    "difference_ci_high",
    "ratio",
    "ratio_ci_low",
    "ratio_ci_high",
    "significant",
    "flag",
]


def _group_rows(
    attribute: str,
    group: str,
    estimates: pd.Series,
    confusion: np.ndarray,
    replicates: np.ndarray,
    keys: list[tuple[str, str]],
    config: AuditConfig,
    judged: Sequence[int],
) -> list[dict[str, Any]]:
    """Rows of by_group for one group: MetricFrame's values, NaN where undefined, intervals."""
    from_counts = metrics_from_counts(confusion, judged)
    low, high = _interval(replicates, config.ci)
    n = int(confusion.sum())
    out = []
    for m, (metric, cls) in enumerate(keys):
        code = f"{metric}@{judged[(m - 2) // 6] if m >= 2 else ''}"
        value = float(estimates[code])
        if np.isnan(from_counts[m]):  # fairlearn returns 0 for an undefined rate
            value = float("nan")
        out.append(
            {
                "attribute": attribute,
                "group": group,
                "n": n,
                "judged": n >= config.min_group_size,
                "metric": metric,
                "class": cls,
                "value": value,
                "ci_low": float(low[m]) if metric != "count" else float("nan"),
                "ci_high": float(high[m]) if metric != "count" else float("nan"),
            }
        )
    return out


def _reference(attribute: str, names: list[str], sizes: dict[str, int], config: AuditConfig) -> str:
    given = config.reference.get(attribute)
    if given is None:
        return max(names, key=lambda name: (sizes[name], name))
    if given not in names:
        raise errors.ConfigError(
            errors.BAD_OPTION.format(
                option="reference",
                value=f"{attribute}={given}",
                problem=f"{attribute!r} has no group {given!r}",
                fix=f"Choose one of: {', '.join(names)}.",
            )
        )
    return given


def _disparity_rows(
    attribute: str,
    names: list[str],
    reference: str,
    replicates: np.ndarray,
    group_counts: np.ndarray,
    keys: list[tuple[str, str]],
    sizes: dict[str, int],
    config: AuditConfig,
    judged: Sequence[int],
) -> list[dict[str, Any]]:
    """Difference and ratio of each group's metrics against the reference group, with flags."""
    r = names.index(reference)
    values = metrics_from_counts(group_counts, judged)  # (V, M)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff_rep = replicates - replicates[:, r : r + 1]
        ratio_rep = replicates / replicates[:, r : r + 1]
        diff = values - values[r]
        ratio = values / values[r]
    d_low, d_high = _interval(diff_rep, config.ci)
    r_low, r_high = _interval(np.where(np.isfinite(ratio_rep), ratio_rep, np.nan), config.ci)
    # Where a group holds one true class only (grouping by the target itself, say), its selection
    # rate and precision for that class follow from the labels, not the classifier: not judged.
    label_bound = {
        m for m, (metric, cls) in enumerate(keys) if metric in ("selection_rate", "precision")
    }
    base = {m: keys.index(("base_rate", keys[m][1])) for m in label_bound}
    out = []
    for v, name in enumerate(names):
        if name == reference:
            continue
        for m, (metric, cls) in enumerate(keys):
            if metric not in JUDGED:
                continue
            small = min(sizes[name], sizes[reference]) < config.min_group_size
            one_class = m in label_bound and any(values[g, base[m]] in (0.0, 1.0) for g in (v, r))
            if small:
                flag = "too small"
            elif not np.isfinite(ratio[v, m]) or one_class:
                flag = "undefined"
            else:
                fair = config.tau <= ratio[v, m] <= 1 / config.tau
                flag = "pass" if fair else "fail"
            significant = bool(
                config.bootstrap > 0
                and np.isfinite(d_low[v, m])
                and (d_low[v, m] > 0 or d_high[v, m] < 0)
            )
            out.append(
                dict(
                    zip(
                        DISPARITY_COLUMNS,
                        [
                            attribute,
                            name,
                            reference,
                            sizes[name],
                            metric,
                            cls,
                            float(values[v, m]),
                            float(values[r, m]),
                            float(diff[v, m]),
                            float(d_low[v, m]),
                            float(d_high[v, m]),
                            float(ratio[v, m]) if np.isfinite(ratio[v, m]) else float("nan"),
                            float(r_low[v, m]),
                            float(r_high[v, m]),
                            significant,
                            flag,
                        ],
                        strict=True,
                    )
                )
            )
    return out
