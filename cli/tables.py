"""Terminal tables of an audit: failing flags first, then the worst group, then the rest."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from debias.fairness.audit import AuditResult
from debias.formatting import interval as _interval
from debias.formatting import number as _num
from debias.jobs.audit import AuditReport
from debias.jobs.outliers import OutlierReport

MAX_ROWS = 12


def show_audit(console: Console, report: AuditReport) -> None:
    """Print an audit's headline, failing disparities, groups by accuracy and worst slices."""
    _headline(console, report.result)
    _show_failing(console, report)
    _show_groups(console, report)
    slices = report.slices
    clusters = slices[slices["kind"] == "cluster"] if len(slices) else slices
    if len(clusters):
        _show_slices(console, clusters, report.result.options.ci)
        _left_out(console, len(clusters), f"{report.out}/slices.csv")
    deciles = slices[slices["kind"] != "cluster"] if len(slices) else slices
    if len(deciles):
        _show_deciles(console, deciles, report.result.options.ci)
    for note in report.notes:
        _say(console, note if note.startswith("Warning:") else f"Note: {note}")
    written = sorted(str(p.relative_to(report.out)) for p in report.out.rglob("*") if p.is_file())
    _say(console, f"Wrote {report.out}/: {', '.join(written)}")


def _say(console: Console, text: str) -> None:
    """Print a line of plain text (names from the data are never read as rich markup)."""
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _headline(console: Console, result: AuditResult) -> None:
    """Print the overall accuracy, the worst group and the largest disparity."""
    summary = result.summary()
    by_group = result.by_group
    overall = by_group[(by_group.attribute == "overall") & (by_group.metric == "accuracy")]
    overall = overall.iloc[0]
    positive = f", positive class {result.pos_label!r}" if result.pos_label else ""
    _say(
        console,
        f"Audited {result.n} predictions ({', '.join(result.classes)}{positive}); "
        f"accuracy {_num(overall['value'])} {_interval(overall['ci_low'], overall['ci_high'])}",
    )
    worst = summary["worst_group"]
    if worst is not None:
        _say(
            console,
            f"Worst group: {worst['attribute']} = {worst['group']}: accuracy "
            f"{_num(worst['value'])} {_interval(worst['ci_low'], worst['ci_high'])} "
            f"(n={worst['n']})",
        )
    largest = summary["largest_disparity"]
    if largest is not None:
        _say(
            console,
            f"Largest disparity: {largest['metric']}{_cls(largest['class'], result.pos_label)} of "
            f"{largest['attribute']} = {largest['group']} vs {largest['reference']}: "
            f"{_num(largest['value'])} vs {_num(largest['reference_value'])} "
            f"(difference {largest['difference']:+.3f}, ratio {_num(largest['ratio'], 2)})",
        )


def _show_failing(console: Console, report: AuditReport) -> None:
    """Print the comparisons that fail the four-fifths rule, most significant and far first."""
    result, config = report.result, report.result.options
    summary = result.summary()
    failing = result.failing().copy()
    if not len(failing):
        console.print(f"No judged group fails the four-fifths rule (tau {config.tau}).")
        return
    failing["distance"] = (failing["ratio"].clip(lower=1e-9).map(math.log)).abs()
    failing = failing.sort_values(["significant", "distance"], ascending=False)
    ways = summary["failing_significant_by_direction"]
    words = {"worse": "leave the group worse off", "better": "leave it better off",
             "higher": "select it more often", "lower": "select it less often"}  # fmt: skip
    said = ", ".join(f"{n} {words[way]}" for way, n in ways.items() if n)
    correction = " after Holm's correction" if config.correction == "holm" else ""
    _say(
        console,
        f"Failing the four-fifths rule (ratio outside [{config.tau}, {1 / config.tau:.2f}]): "
        f"{len(failing)} of {summary['judged']} judged; "
        f"{summary['failing_significant']} significant{correction}"
        + (f"; of those, {said} (than its reference)" if said else ""),
    )
    table = Table()
    columns = ("attribute", "group", "vs", "metric", "value", "ref", "ratio [CI]", "sig.")
    for column in (*columns, "group is"):
        table.add_column(column, justify="right" if column in ("value", "ref") else "left")
    for _, row in failing.head(MAX_ROWS).iterrows():
        _add_row(
            table,
            row["attribute"],
            row["group"],
            row["reference"],
            row["metric"] + _cls(row["class"], result.pos_label),
            _num(row["value"]),
            _num(row["reference_value"]),
            f"{_num(row['ratio'], 2)} {_interval(row['ratio_ci_low'], row['ratio_ci_high'])}",
            "yes" if row["significant"] else "no",
            row["direction"],
        )
    console.print(table)
    _left_out(console, len(failing), f"{report.out}/disparities.csv")
    if summary["duplicates"]:
        _say(
            console,
            f"{summary['duplicates']} row(s) repeat another row's fact (same metric, values "
            "and interval, e.g. when all positives are in one subgroup): not counted again; "
            "see duplicate_of in disparities.csv",
        )


def _show_groups(console: Console, report: AuditReport) -> None:
    """Print every group's accuracy with its interval, lowest first."""
    by_group, config = report.result.by_group, report.result.options
    groups = by_group[(by_group.metric == "accuracy") & (by_group.attribute != "overall")]
    groups = groups.sort_values("value")
    table = Table(title="Accuracy by group, lowest first", title_justify="left")
    for column in ("attribute", "group", "n", "accuracy", f"{config.ci:.0%} CI", "note"):
        table.add_column(column)
    for _, row in groups.head(MAX_ROWS).iterrows():
        _add_row(
            table,
            row["attribute"],
            row["group"],
            str(row["n"]),
            _num(row["value"]),
            _interval(row["ci_low"], row["ci_high"]),
            "" if row["judged"] else f"too small (< {config.min_group_size})",
        )
    console.print(table)
    _left_out(console, len(groups), f"{report.out}/by_group.csv")


def _left_out(console: Console, n: int, where: str) -> None:
    """Say how many rows a table left out, and where they all are."""
    if n > MAX_ROWS:
        _say(console, f"... {n - MAX_ROWS} more row(s) not shown; all {n} in {where}")


def _add_row(table: Table, *cells: str) -> None:
    """Add a row of plain text: group names and class names are never read as rich markup."""
    table.add_row(*(escape(str(c)) for c in cells))


def _cls(name: str, positive: str | None) -> str:
    return f"[{name}]" if name and positive is None else ""


def _show_slices(console: Console, clusters: pd.DataFrame, ci: float) -> None:
    table = Table(title="Label-free slices (latent clusters), worst first", title_justify="left")
    for column in ("rank", "n", "error rate", f"{ci:.0%} CI", "share of errors", "make-up"):
        table.add_column(column)
    for _, row in clusters.head(MAX_ROWS).iterrows():
        _add_row(
            table,
            str(row["rank"]),
            str(row["n"]),
            _num(row["error_rate"]),
            _interval(row["ci_low"], row["ci_high"]),
            f"{row['share_of_errors']:.0%}",
            row["composition"] or "",
        )
    console.print(table)


def _show_deciles(console: Console, deciles: pd.DataFrame, ci: float) -> None:
    """Print the error rate by latent-density decile: do rare faces fail more often."""
    table = Table(
        title="Error rate by latent-density decile (1 = rarest under the training density)",
        title_justify="left",
    )
    for column in ("decile", "n", "error rate", f"{ci:.0%} CI"):
        table.add_column(column)
    for _, row in deciles.iterrows():
        _add_row(
            table,
            str(row["slice"]),
            str(row["n"]),
            _num(row["error_rate"]),
            _interval(row["ci_low"], row["ci_high"]),
        )
    console.print(table)


def show_outliers(console: Console, report: OutlierReport) -> None:
    """Print the counts, the most anomalous inputs and, with labels, the evaluation."""
    table, detector = report.table, report.detector
    unreadable = int((table["reason"] != "").sum())
    console.print(
        f"Scored {len(table)} files: {int(table['is_outlier'].sum())} flagged as outliers "
        f"(target false-flag rate {detector.contamination:.0%}, calibrated on "
        f"{report.calibrated_on}), {int(table['is_rare'].sum())} rare "
        "(low latent density), "
        f"{unreadable} unreadable",
        highlight=False,
        markup=False,
    )
    top = Table(title="Most anomalous first", title_justify="left")
    for column in ("rank", "path", "p-value", "outlier", "rare", "reason"):
        top.add_column(column)
    for _, row in table.head(MAX_ROWS).iterrows():
        _add_row(
            top,
            str(row["rank"]),
            Path(row["path"]).name,
            _num(row["p_value"], 4),
            "yes" if row["is_outlier"] else "no",
            "yes" if row["is_rare"] else "no",
            row["reason"],
        )
    console.print(top)
    if report.evaluation is not None:
        _show_evaluation(console, report.evaluation)
    _show_flag_rates(console, report)
    for note in report.notes:
        _say(console, f"Note: {note}")
    console.print(f"Wrote {report.csv} and {report.csv.with_suffix('.json')}")


def _show_evaluation(console: Console, ev: dict) -> None:
    """Print AUROC, AUPR and the flagged share of each outlier type (scans with eval labels)."""
    result = Table(
        title=f"Against the labels: {ev['n_inliers']} inliers, realised false-flag rate "
        f"{ev['false_flag_rate']:.3f} (target {ev['target_false_flag_rate']})",
        title_justify="left",
    )
    for column in ("type", "n", "AUROC", "AUPR", "flagged", "missed at 95% kept"):
        result.add_column(column)
    for name, m in ev["types"].items():
        _add_row(
            result,
            name,
            str(m["n"]),
            _num(m["auroc"]),
            _num(m["aupr"]),
            _num(m["flagged_at_threshold"]),
            _num(m["missed_at_95_kept"]),
        )
    console.print(result)


def _show_flag_rates(console: Console, report: OutlierReport) -> None:
    """Print each group's flag rate with its exact interval (scans with calibration groups)."""
    for attribute, rows in report.by_group.items():
        among = "inliers" if report.evaluation is not None else "screened images"
        table = Table(
            title=f"Flag rate by {attribute} (among {among}; target "
            f"{report.detector.contamination:.0%}; 95% exact intervals)",
            title_justify="left",
        )
        for column in ("group", "n", "flagged", "rate", "95% CI"):
            table.add_column(column)
        for row in rows:
            _add_row(
                table,
                row["group"],
                str(row["n"]),
                str(row["flagged"]),
                _num(row["rate"]),
                _interval(row["ci_low"], row["ci_high"]),
            )
        console.print(table)
