"""The fairness audit: per-group metrics, bootstrap confidence intervals and disparities.

``audit(y_true, y_pred, sensitive_features=...)`` is pure: predictions in, tables out. It is
called as fairlearn's ``MetricFrame`` is (arrays, Series, DataFrames or dicts) and its result
answers as a MetricFrame does (``overall``, ``wide()``, ``difference()``, ``ratio()``,
``group_min()``). Point estimates come from fairlearn's ``MetricFrame``
(:mod:`debias.fairness.metrics`), intervals from a bootstrap of confusion counts
(:mod:`debias.fairness.bootstrap`), and each group is compared with its attribute's reference
group (:mod:`debias.fairness.disparities`). Every metric is a function of a group's confusion
counts, which is what makes the count bootstrap exact; a test checks the count formulas against
``MetricFrame`` value for value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from debias import errors
from debias.classes import positive_class
from debias.errors import check_option
from debias.fairness.bootstrap import bootstrap_counts, cell_counts, interval
from debias.fairness.disparities import (
    DISPARITY_COLUMNS,
    disparities,
    holm,
    mark_duplicates,
    reference_group,
)
from debias.fairness.groups import check_groups, suitable_groups
from debias.fairness.metrics import MetricKey, metric_frame, metric_keys, metrics_from_counts

INTERSECTION = " & "  # joins attribute names and their values for the intersection
CORRECTIONS = ("none", "holm")


@dataclass
class AuditOptions:
    """How the audit's statistics are computed; saved in ``audit.json`` with its results.

    Attributes
    ----------
    groups : list of str
        Attribute columns to audit by; their intersection is audited too when there are two or
        more. The ``debias audit`` job fills in every suitable column when none are given.
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
        The positive class of a binary target (default: see :func:`debias.classes.positive_class`).
    slices : int
        Number of latent clusters for label-free slice discovery.
    seed : int
        Seed of the bootstrap and the clustering.
    correction : str
        Multiple-comparison correction of the disparities' significance: ``none`` (a difference
        is significant when its interval excludes 0) or ``holm`` (when its Holm-adjusted
        bootstrap p-value is below ``1 - ci``, over every judged, distinct disparity).
    """

    groups: list[str] = field(default_factory=list)
    reference: dict[str, str] = field(default_factory=dict)
    bootstrap: int = 1000  # percentile interval ends are stable to about +-0.005 at 1000
    ci: float = 0.95
    tau: float = 0.8  # the four-fifths rule of the US EEOC guidelines
    min_group_size: int = 30  # below 30, a 95% interval on an accuracy is wider than +-0.15
    pos_label: str | None = None
    slices: int = 8  # enough to isolate a 5-10% subgroup, few enough to read
    seed: int = 0
    correction: str = "none"

    def validate(self) -> None:
        """Raise ConfigError on an out-of-range option."""
        checks = (
            (
                "bootstrap",
                0 <= self.bootstrap <= 100_000,  # 1,000 is stable to about 0.005
                "use 0 (no intervals) to 100000 replicates",
            ),
            ("ci", 0 < self.ci < 1, "use a level between 0 and 1, such as 0.95"),
            ("tau", 0 < self.tau <= 1, "use a threshold in (0, 1], such as 0.8"),
            ("min-group-size", self.min_group_size >= 1, "use 1 or more"),
            ("slices", self.slices >= 1, "use 1 or more"),
        )
        for option, ok, fix in checks:
            value = getattr(self, option.replace("-", "_"))
            check_option(ok, option, value, "out of range", fix.capitalize())
        check_option(
            self.correction in CORRECTIONS,
            "correction",
            self.correction,
            "unknown choice",
            f"Use {' or '.join(CORRECTIONS)}.",
        )

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
        ``difference`` and ``ratio`` with intervals, ``flag`` (pass, fail, too small, undefined),
        ``p_value`` and ``significant`` (the difference's interval excludes 0, or its corrected
        p-value is small), ``direction`` (the group is ``worse`` or ``better`` off than the
        reference; ``higher``/``lower`` for selection rates) and ``duplicate_of`` (an earlier
        row stating the same fact, not counted again).
    classes : list of str
    pos_label : str or None
        Positive class of a binary target; None for multi-class (rates are one-vs-rest).
    options : AuditOptions
    n : int
        Number of predictions audited.
    predictions : pandas.DataFrame
        What was audited: ``y_true``, ``y_pred`` and the sensitive features, one row each.
    """

    by_group: pd.DataFrame
    disparities: pd.DataFrame
    classes: list[str]
    pos_label: str | None
    options: AuditOptions
    n: int = 0
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def overall(self) -> pd.Series:
        """Each metric over all rows (MetricFrame's ``overall``), named as in :meth:`wide`."""
        rows = self.by_group[self.by_group.attribute == "overall"]
        return pd.Series(rows["value"].to_numpy(), index=self._metric_names(rows), name="overall")

    def wide(self, attribute: str | None = None) -> pd.DataFrame:
        """One row per group, one column per metric: MetricFrame's ``by_group`` table.

        Parameters
        ----------
        attribute : str, optional
            A sensitive feature, or the intersection (``"a & b"``). Default: the finest one —
            the intersection when there are several features, as MetricFrame groups them.
        """
        attribute = attribute or self._finest()
        rows = self.by_group[self.by_group.attribute == attribute]
        known = ", ".join(attributes_of(self.options.groups)) or "none"
        check_option(
            len(rows) > 0,
            "attribute",
            attribute,
            "not an audited attribute",
            f"Use one of: {known}.",
        )
        table = rows.assign(metric=self._metric_names(rows))
        wide = table.pivot(index="group", columns="metric", values="value")
        wide = wide[list(dict.fromkeys(table["metric"]))]  # the audit's metric order
        wide.index.name, wide.columns.name = attribute, None
        return wide

    def group_min(self, attribute: str | None = None) -> pd.Series:
        """Each metric's smallest value over the groups (``MetricFrame.group_min``)."""
        return self._judged_wide(attribute).min()

    def group_max(self, attribute: str | None = None) -> pd.Series:
        """Each metric's largest value over the groups (``MetricFrame.group_max``)."""
        return self._judged_wide(attribute).max()

    def difference(self, attribute: str | None = None) -> pd.Series:
        """Largest minus smallest group value per metric (MetricFrame's between_groups)."""
        return self.group_max(attribute) - self.group_min(attribute)

    def ratio(self, attribute: str | None = None) -> pd.Series:
        """Smallest over largest group value per metric (MetricFrame's between_groups)."""
        return self.group_min(attribute) / self.group_max(attribute)

    def demographic_parity_difference(self, attribute: str | None = None) -> float:
        """Return the largest minus smallest selection rate over the groups (as fairlearn)."""
        return float(self.difference(attribute)[self._binary("selection_rate")])

    def equalized_odds_difference(self, attribute: str | None = None) -> float:
        """Return the larger of the TPR and FPR differences over the groups (as fairlearn)."""
        difference = self.difference(attribute)
        return float(max(difference[self._binary("tpr")], difference[self._binary("fpr")]))

    def failing(self, significant: bool = False) -> pd.DataFrame:
        """Return the distinct disparity rows that fail the four-fifths rule.

        With ``significant``, only those whose difference is significant (what a CI gate usually
        wants). Rows that repeat an earlier row's fact (``duplicate_of``) are left out.
        """
        rows = self.disparities[
            (self.disparities.flag == "fail") & (self.disparities.duplicate_of == "")
        ]
        return rows[rows.significant.astype(bool)] if significant else rows

    def _binary(self, metric: str) -> str:
        check_option(
            self.pos_label is not None,
            "pos_label",
            None,
            f"{metric} summaries need a binary target, this one has {len(self.classes)} classes",
            "Use wide() for the one-vs-rest rates of each class.",
        )
        return metric

    def to_json(self) -> str:
        """Return the result as strict JSON: by_group, disparities, summary, classes, options."""
        from debias.files import json_text  # files is I/O; the audit itself stays pure

        return json_text(
            {
                "n": self.n,
                "classes": self.classes,
                "pos_label": self.pos_label,
                "options": self.options.to_dict(),
                "summary": self.summary(),
                "by_group": self.by_group.to_dict("records"),
                "disparities": self.disparities.to_dict("records"),
            }
        )

    def _finest(self) -> str:
        attributes = attributes_of(self.options.groups)
        return attributes[-1] if attributes else "overall"

    def _judged_wide(self, attribute: str | None) -> pd.DataFrame:
        wide = self.wide(attribute).drop(columns="count")
        rows = self.by_group[self.by_group.attribute == (attribute or self._finest())]
        judged = rows.groupby("group")["judged"].first()
        return wide[judged.reindex(wide.index).to_numpy()]  # groups below min_group_size wait

    def _metric_names(self, rows: pd.DataFrame) -> list[str]:
        """``metric`` for a binary target; ``metric[class]`` one-vs-rest for several classes."""
        if self.pos_label is not None:
            return rows["metric"].tolist()
        return [
            m if not c else f"{m}[{c}]" for m, c in zip(rows["metric"], rows["class"], strict=True)
        ]

    def summary(self) -> dict[str, Any]:
        """Return the worst judged group by accuracy, the largest disparity, and the flag counts."""
        groups = self.by_group[
            (self.by_group.metric == "accuracy")
            & self.by_group.judged
            & (self.by_group.attribute != "overall")
        ]
        worst = groups.sort_values("value").head(1).to_dict("records")
        distinct = self.disparities[self.disparities.duplicate_of == ""]
        judged = distinct[distinct.flag.isin(["pass", "fail"])]
        largest = judged.reindex(judged.difference.abs().sort_values(ascending=False).index)
        significant = self.failing(significant=True)
        return {
            "worst_group": worst[0] if worst else None,
            "largest_disparity": largest.head(1).to_dict("records")[0] if len(largest) else None,
            "failing": len(self.failing()),
            "failing_significant": len(significant),
            # which way the significant failures point: the group worse or better off
            "failing_significant_by_direction": {
                d: int((significant.direction == d).sum())
                for d in ("worse", "better", "higher", "lower")
            },
            "duplicates": int((self.disparities.duplicate_of != "").sum()),
            "judged": len(judged),
            "correction": self.options.correction,
        }


BY_GROUP_COLUMNS = ["attribute", "group", "n", "judged", "metric", "class", "value"]
BY_GROUP_COLUMNS += ["ci_low", "ci_high"]


def attributes_of(groups: Sequence[str]) -> list[str]:
    """Audited attributes: each group column, and their intersection when there are several."""
    return [*groups, INTERSECTION.join(groups)] if len(groups) > 1 else list(groups)


def audit(
    y_true: Sequence[object],
    y_pred: Sequence[object],
    sensitive_features: object = None,
    options: AuditOptions | None = None,
    classes: Sequence[str] | None = None,
) -> AuditResult:
    """Audit predictions per group, per intersection and overall.

    Parameters
    ----------
    y_true, y_pred : array-like
        True and predicted class of each row (compared as text): lists, arrays or Series.
    sensitive_features : array-like, Series, DataFrame or dict, optional
        One or more group attributes, one row per prediction, as fairlearn takes them (a 1-D
        array or unnamed Series is ``sensitive_feature_0``). Empty or missing values leave a row
        out of that attribute's groups (it still counts overall).
    options : AuditOptions, optional
        How the statistics are computed (default: :class:`AuditOptions`'s defaults). With no
        ``options.groups``, every feature with 2 to 20 distinct values is audited, as the command
        line does.
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
    >>> r = audit(y, p, sensitive_features=g, options=AuditOptions(bootstrap=100))
    >>> r.summary()["worst_group"]["group"]
    'dark'
    >>> round(r.difference()["accuracy"], 2)
    0.33
    """
    options = options or AuditOptions()
    options.validate()
    groups, options = _groups(sensitive_features, len(y_true), options)
    classes, yt, yp = _encoded(y_true, y_pred, classes)
    pos = positive_class(classes, options.pos_label)
    judged = [classes.index(pos)] if pos is not None else list(range(len(classes)))
    outcome = _Outcomes.of(groups, yt, yp, classes, options, metric_keys(classes, judged))
    rows, disparity_rows = outcome.tables(attributes_of(options.groups))
    names = np.asarray(classes, dtype=object)
    audited = pd.DataFrame({"y_true": names[yt], "y_pred": names[yp]})
    audited[options.groups] = groups[options.groups].reset_index(drop=True)
    return AuditResult(
        pd.DataFrame(rows, columns=BY_GROUP_COLUMNS),
        _disparity_table(disparity_rows, options),
        classes,
        pos,
        options,
        n=len(yt),
        predictions=audited,
    )


def _encoded(
    y_true: Sequence[object], y_pred: Sequence[object], classes: Sequence[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Return the class names (default: every one seen, sorted) and both label arrays as codes."""
    if classes is None:
        seen = pd.concat([pd.Series(y_true), pd.Series(y_pred)]).astype(str).unique()
        classes = sorted(seen.tolist())
    classes = [str(c) for c in classes]
    return classes, _codes(y_true, classes, "y_true"), _codes(y_pred, classes, "y_pred")


def _groups(
    sensitive_features: object, n: int, options: AuditOptions
) -> tuple[pd.DataFrame, AuditOptions]:
    """Return the group columns as a frame of ``n`` rows, and options naming the audited ones."""
    groups = sensitive_frame(sensitive_features, n)
    if not options.groups:
        options = dataclasses.replace(options, groups=suitable_groups(groups, list(groups.columns)))
    check_groups(groups, options.groups)
    return groups, options


@dataclass
class _Outcomes:
    """The audited rows as confusion counts per finest cell, with their bootstrap.

    Also MetricFrame's frequency-weighted outcome table. Every group and the overall row are
    sums of cells, so one set of bootstrap replicates serves them all.
    """

    options: AuditOptions
    keys: list[MetricKey]
    cell_groups: pd.DataFrame  # (G, attributes) the values of each finest cell
    counts: np.ndarray  # (G, C, C) confusion counts per cell [true, pred]
    boot: np.ndarray  # (B, G, C, C) bootstrap replicates of them
    g_idx: np.ndarray  # the outcome table: cell, true and predicted class of each nonzero count
    t_idx: np.ndarray
    p_idx: np.ndarray
    weight: np.ndarray  # each nonzero count

    @classmethod
    def of(
        cls,
        groups: pd.DataFrame,
        yt: np.ndarray,
        yp: np.ndarray,
        classes: list[str],
        options: AuditOptions,
        keys: list[MetricKey],
    ) -> _Outcomes:
        """Count the outcomes per finest cell and draw their bootstrap."""
        cells, cell_groups = finest_cells(groups, options.groups)
        n_cells = len(cell_groups) or 1
        counts = cell_counts(cells, yt, yp, n_cells, len(classes))  # (G, C, C)
        rng = np.random.default_rng(options.seed)
        boot = bootstrap_counts(counts, options.bootstrap, rng)  # (B, G, C, C)
        g_idx, t_idx, p_idx = np.nonzero(counts)
        weight = counts[g_idx, t_idx, p_idx].astype(np.float64)
        return cls(options, keys, cell_groups, counts, boot, g_idx, t_idx, p_idx, weight)

    def overall_rows(self) -> list[tuple]:
        """Return the overall row of every metric."""
        everyone = pd.Series(np.zeros(len(self.g_idx), dtype=np.int64), name="overall")
        overall = metric_frame(self.t_idx, self.p_idx, everyone, self.keys, self.weight).overall
        replicates = metrics_from_counts(self.boot.sum(axis=1), self.keys)
        return _group_rows(
            "overall", "all", overall, self.counts.sum(axis=0), replicates, self.keys, self.options
        )

    def tables(self, attributes: Sequence[str]) -> tuple[list[tuple], list[tuple]]:
        """Return the rows of the overall and every attribute's groups, and their disparities."""
        rows, disparity_rows = self.overall_rows(), []
        for attribute in attributes:
            attribute_rows, attribute_disparities = self.attribute_rows(attribute)
            rows += attribute_rows
            disparity_rows += attribute_disparities
        return rows, disparity_rows

    def attribute_rows(self, attribute: str) -> tuple[list[tuple], list[tuple]]:
        """Return the rows of ``attribute``'s groups and its disparities against its reference."""
        cell_value = attribute_values(self.cell_groups, attribute)  # (G,)
        names = sorted(set(cell_value) - {""})
        if not names:
            return [], []
        row_value = cell_value[self.g_idx]
        present = row_value != ""
        by_group = metric_frame(
            self.t_idx[present],
            self.p_idx[present],
            pd.Series(row_value[present], name=attribute),
            self.keys,
            self.weight[present],
        ).by_group
        member = (cell_value[None, :] == np.array(names, dtype=object)[:, None]).astype(np.int64)
        group_counts = np.einsum("vg,gij->vij", member, self.counts)  # (V, C, C)
        replicates = metrics_from_counts(np.einsum("vg,bgij->bvij", member, self.boot), self.keys)
        rows = []
        for v, name in enumerate(names):
            rows += _group_rows(
                attribute, name, by_group.loc[name], group_counts[v], replicates[:, v],
                self.keys, self.options,
            )  # fmt: skip
        sizes = {name: int(group_counts[v].sum()) for v, name in enumerate(names)}
        reference = reference_group(attribute, names, sizes, self.options.reference)
        found = disparities(
            attribute,
            names,
            reference,
            group_counts,
            replicates,
            self.keys,
            ci=self.options.ci,
            tau=self.options.tau,
            min_group_size=self.options.min_group_size,
            bootstrapped=self.options.bootstrap > 0,
        )
        return rows, found


def _disparity_table(disparity_rows: list[tuple], options: AuditOptions) -> pd.DataFrame:
    """Return the disparities as a table: repeats marked, p-values Holm-adjusted if asked."""
    table = pd.DataFrame(disparity_rows, columns=DISPARITY_COLUMNS)
    table["duplicate_of"] = mark_duplicates(table) if len(table) else []
    if options.correction == "holm" and len(table):
        tested = table.flag.isin(["pass", "fail"]) & (table.duplicate_of == "")
        adjusted = holm(table["p_value"].where(tested).to_numpy())
        table["p_value"] = np.where(tested, adjusted, table["p_value"])
        table["significant"] = tested & (adjusted < 1 - options.ci)
    return table


def sensitive_frame(features: object, n: int) -> pd.DataFrame:
    """Sensitive features as a DataFrame of text, one row per prediction, '' where missing.

    Takes what fairlearn's MetricFrame takes: None, a 1-D or 2-D array or list, a Series, a
    DataFrame or a dict of columns.
    """
    if features is None:
        frame = pd.DataFrame(index=range(n))
    elif isinstance(features, pd.DataFrame):
        frame = features.reset_index(drop=True)
    elif isinstance(features, pd.Series):
        frame = features.reset_index(drop=True).to_frame(features.name or "sensitive_feature_0")
    elif isinstance(features, dict):
        frame = pd.DataFrame({k: np.asarray(v, dtype=object) for k, v in features.items()})
    else:
        values = np.asarray(features, dtype=object)
        values = values.reshape(len(values), -1) if values.ndim != 2 else values
        frame = pd.DataFrame(
            values, columns=[f"sensitive_feature_{i}" for i in range(values.shape[1])]
        )
    if len(frame) != n:
        raise errors.DataError(errors.FEATURES_LENGTH.format(n_features=len(frame), n=n))
    frame.columns = [str(c) for c in frame.columns]
    return frame.where(frame.notna(), "").astype(str).apply(lambda c: c.str.strip())


def finest_cells(groups: pd.DataFrame, names: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Each row's cell (its combination of the attributes' values) and each cell's values.

    Returns
    -------
    cells : numpy.ndarray
        ``(N,)`` cell codes ``0..G-1`` (all 0 when there are no attributes).
    cell_groups : pandas.DataFrame
        ``(G, attributes)``: the values of each cell, in code order.
    """
    frame = groups[list(names)].reset_index(drop=True).astype(str)
    if names:
        codes = [pd.factorize(frame[g])[0] for g in names]
        cells, _ = pd.factorize(pd.MultiIndex.from_arrays(codes))
    else:
        cells = np.zeros(len(frame), dtype=np.int64)
    first_row = pd.Series(np.arange(len(cells))).groupby(cells).first().to_numpy()
    return cells.astype(np.int64), frame.iloc[first_row].reset_index(drop=True)


def attribute_values(cells: pd.DataFrame, attribute: str) -> np.ndarray:
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
            errors.UNKNOWN_CLASS.format(what=what, value=unknown, classes=", ".join(classes))
        )
    return codes.astype(np.int64)


def _group_rows(
    attribute: str,
    group: str,
    estimates: pd.Series,
    confusion: np.ndarray,
    replicates: np.ndarray,
    keys: list[MetricKey],
    options: AuditOptions,
) -> list[tuple]:
    """Rows of by_group for one group: MetricFrame's values, NaN where undefined, intervals."""
    from_counts = metrics_from_counts(confusion, keys)
    low, high = interval(replicates, options.ci)
    n = int(confusion.sum())
    out = []
    for m, key in enumerate(keys):
        value = float(estimates[key.code])
        if np.isnan(from_counts[m]):  # fairlearn returns 0 for an undefined rate
            value = float("nan")
        counted = key.metric == "count"  # a count has no interval
        out.append(
            (
                attribute,
                group,
                n,
                n >= options.min_group_size,
                key.metric,
                key.class_name,
                value,
                float("nan") if counted else float(low[m]),
                float("nan") if counted else float(high[m]),
            )
        )
    return out
