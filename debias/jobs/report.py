"""The ``debias report`` job: a self-contained HTML report, its facts as JSON, a Markdown summary.

``write_report(ReportConfig)`` reports on any audited classifier: a debias run (with its
training), a model file or a predictions CSV (from what its audit recorded). It gathers the typed
facts (:mod:`debias.facts`) and writes ``report.html`` (inline CSS, images as data URIs, no
scripts, no network requests), ``report.json`` and ``report.md`` into ``reports/<name>/``. An
audit is never attributed to a model it did not come from: the SHA-256 it recorded must match.
To compare with a baseline on the same images it needs the baseline's audit: pass
``baseline_audit``, or, for a baseline run, the job audits it with the audit's own inputs and
options into ``<out>/baseline-audit`` and says so through the listener. The change from baseline
to debiased carries paired bootstrap intervals over the audited images. Everything from user data
is escaped by jinja2's autoescaping.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

import debias
from debias import errors, figures, files, runfolder
from debias.data import decode_images
from debias.facts import (
    ReportFacts,
    Subject,
    accuracy_rows,
    audited_attributes,
    baseline_changes,
    gather_facts,
    read_audit,
    recorded_subject,
    report_subject,
)
from debias.fairness.audit import INTERSECTION, AuditResult
from debias.fairness.paired import WORST
from debias.formatting import number
from debias.jobs.audit import PREDICTIONS, AuditConfig, versions, write_audit
from debias.progress import Listener, SilentListener

N_GRID = 10  # faces per row in the highest / lowest sampling-weight grids
N_OUTLIERS = 12
THUMBNAIL = 64  # side of outlier thumbnails when no run says its image size


@dataclass
class ReportConfig:
    """What goes into a report.

    Attributes
    ----------
    model : str or None
        What the report is about: a debias run folder or a model file; default: what ``audit``
        audited. A model file needs its audit; a run without one gets its training only.
    baseline : str or None
        A plain-classifier run to compare with.
    audit : str or None
        An audit folder of ``model`` (``debias audit --out``).
    baseline_audit : str or None
        An audit folder of the baseline on the same images with the same options (default, for
        a baseline run: the report audits it itself, into ``<out>/baseline-audit``, and says so).
    outliers : str or None
        An ``outliers.csv`` written by ``debias outliers`` (its JSON beside it).
    name : str or None
        Report name (default: the name of the run folder, model file or predictions CSV).
    out : str or None
        Output folder (default ``reports/<name>``).
    overwrite : bool
        Replace an existing report at ``out`` (otherwise refused before any work).
    """

    model: str | None = None
    baseline: str | None = None
    audit: str | None = None
    baseline_audit: str | None = None
    outliers: str | None = None
    name: str | None = None
    out: str | None = None
    overwrite: bool = False


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode() if png else ""


def write_report(config: ReportConfig, *, listener: Listener | None = None) -> Path:
    """Write ``report.html``, ``report.json`` and ``report.md``; return the HTML's path.

    Parameters
    ----------
    config : ReportConfig
    listener : Listener, optional
        Progress hooks; told (``note``) when the job audits the baseline itself.

    Raises
    ------
    RunError
        When a run or audit folder is missing or incomplete.
    """
    listener = listener or SilentListener()
    audit = read_audit(config.audit) if config.audit else None
    subject, run = report_subject(config.model, audit, config.audit)
    run_config = runfolder.read_config(run) if run else None
    baseline_subject = _baseline_subject(config)
    name = config.name or Path(subject.path).resolve().name.removesuffix(".csv")
    out = Path(config.out or Path("reports") / name)
    files.check_destination(out, REPORT_FILE, REPORT_WHAT, config.overwrite)  # before the work
    outliers, outlier_table = _read_outliers(config.outliers)

    with files.output_set(out, REPORT_FILE, REPORT_WHAT, config.overwrite) as staging:
        baseline_audit_dir, reads_from = config.baseline_audit, config.baseline_audit
        if baseline_subject is not None and audit is not None and baseline_audit_dir is None:
            baseline_audit_dir = str(out / "baseline-audit")
            reads_from = str(staging / "baseline-audit")  # lands with the report, or not at all
            _audit_baseline(config, audit, baseline_audit_dir, reads_from, listener)
        compared = reads_from if audit is not None else None
        baseline = config.baseline
        if compared and not baseline:  # the baseline is what its audit audited
            baseline = recorded_subject(read_audit(compared)).path
        facts = gather_facts(
            subject,
            name=name,
            versions=versions(),
            run=run,
            baseline=baseline,
            audit=audit,
            baseline_audit=compared,
            outliers=outliers,
        )
        baseline_audit = read_audit(reads_from) if facts.baseline_audit else None
        if facts.baseline_audit:
            facts.changes = baseline_changes(config.audit, reads_from, audit)
            facts.baseline_audit = baseline_audit_dir  # where it is once the set has landed
        figs = _figures(config, run, run_config, facts, audit)
        slices = _slice_images(config.audit, facts.slices)
        size = run_config["train"]["model"]["image_size"] if run_config else THUMBNAIL
        outlier_rows = _outlier_rows(outlier_table, size)
        html = _render(facts, figs, audit, baseline_audit, slices, outlier_rows)
        files.write_json(staging / "report.json", facts.to_dict())
        markdown = _markdown(facts)
        files.atomic_write(staging / "report.md", lambda fh: fh.write(markdown.encode()))
        files.atomic_write(staging / REPORT_FILE, lambda fh: fh.write(html.encode()))
    return out / REPORT_FILE


def _baseline_subject(config: ReportConfig) -> Subject | None:
    """Return what the baseline is, checked against its audit if given (None: no baseline)."""
    if not config.baseline:
        return None
    if not Path(config.baseline).is_dir() and not config.baseline_audit:
        raise errors.ConfigError(errors.BASELINE_NEEDS_AUDIT.format(path=config.baseline))
    baseline_audit_json = read_audit(config.baseline_audit) if config.baseline_audit else None
    subject, _ = report_subject(config.baseline, baseline_audit_json, config.baseline_audit)
    return subject


def _audit_baseline(
    config: ReportConfig, audit: dict[str, Any], lands_in: str, writes_to: str, listener: Listener
) -> None:
    """Audit the baseline run with the audit's own inputs and options, and say so."""
    listener.note(
        f"Auditing the baseline {config.baseline} on the same images with the same options into "
        f"{lands_in} (pass --baseline-audit to use an existing audit)"
    )
    inputs = AuditConfig.from_dict(audit["config"])
    write_audit(
        dataclasses.replace(
            inputs, model=config.baseline, embed_with=None, out=writes_to, overwrite=False
        ),
        listener=listener,
    )


def report_predictions(
    result: AuditResult, folder: str | Path, *, name: str | None = None, overwrite: bool = False
) -> Path:
    """Write an in-memory audit's predictions, their audit and a report; return the HTML's path.

    The audit is made again from the written CSV with the same options (and seed), so its
    numbers are the result's and the report can name the file it is about.
    """
    folder = Path(folder)
    csv = folder / PREDICTIONS
    files.check_destination(folder, PREDICTIONS, "a debias audit result", overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    files.write_csv(csv, result.predictions)
    write_audit(
        AuditConfig(
            predictions=str(csv),
            classes=list(result.classes),
            options=result.options,
            out=str(folder / "audit"),
            overwrite=True,
        )
    )
    report = ReportConfig(
        audit=str(folder / "audit"),
        name=name or folder.resolve().name,
        out=str(folder / "report"),
        overwrite=True,
    )
    return write_report(report)


def _read_outliers(csv_path: str | None) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """Read an outliers CSV and its JSON summary (without its config), or None twice."""
    if not csv_path:
        return None, None
    csv = Path(csv_path)
    if csv.is_dir():
        raise errors.RunError(errors.NOT_A_FILE.format(path=csv))
    if not csv.is_file():
        raise errors.RunError(errors.NO_SUCH_FILE.format(path=csv))
    pair = csv.with_suffix(".json")
    if not pair.is_file():
        raise errors.RunError(errors.NO_SUCH_FILE.format(path=pair))
    summary = files.read_json(pair, RERUN_OUTLIERS)
    if summary.get("csv_sha256") not in (None, files.sha256(csv)):
        raise errors.RunError(errors.OUTLIERS_MISMATCH.format(csv=csv, json=pair))
    numbers = ("n", "n_outliers", "n_rare", "n_unreadable", "target_false_flag_rate")
    wrong = [k for k in numbers if not isinstance(summary.get(k), int | float)]
    if not isinstance(summary.get("threshold", 0), int | float | None):  # None: too few to flag
        wrong.append("threshold")
    if wrong or not isinstance(summary.get("evaluation") or {}, dict):
        problem = f"lacks {', '.join(wrong) or 'a readable evaluation'}"
        raise files.damaged(pair, problem, RERUN_OUTLIERS)
    # Read as text: with no unreadable rows the column is all empty and would parse as float.
    columns = {"path", "rank", "p_value", "reason"}
    table = files.read_csv(csv, RERUN_OUTLIERS, columns, dtype={"reason": str, "path": str})
    table["reason"] = table["reason"].fillna("")
    table["path"] = table["path"].fillna("")
    return {k: v for k, v in summary.items() if k != "config"}, table


REPORT_FILE = "report.html"  # written last into the set; what marks a folder as a report
REPORT_WHAT = "a debias report"
RERUN_OUTLIERS = "Run debias outliers again to write it."


def _figures(
    config: ReportConfig,
    run: Path | None,
    run_config: dict[str, Any] | None,
    facts: ReportFacts,
    audit: dict[str, Any] | None,
) -> dict[str, str]:
    """Every figure of the report as data URIs, keyed by where it goes (training needs a run)."""
    figs: dict[str, str] = {}
    if audit is not None and facts.headline is not None:
        acc = accuracy_rows(audit)
        for attribute in audited_attributes(audit):
            figs[f"bars:{attribute}"] = _data_uri(
                figures.group_bars(
                    acc[acc.attribute == attribute],
                    f"accuracy by {attribute}",
                    reference=facts.headline.overall_accuracy,
                )
            )
    if run is None or run_config is None:
        return figs
    metrics = {"debiased": runfolder.read_metrics(run)}
    if config.baseline and Path(config.baseline).is_dir():
        metrics["baseline"] = runfolder.read_metrics(config.baseline)
    figs["curves"] = _data_uri(figures.training_curves(metrics))
    figs["ess"] = _data_uri(figures.ess_curve(metrics["debiased"]))
    samples = runfolder.read_samples(run)
    weighted = samples[samples["sampling_weight"].notna()]
    weights = weighted["sampling_weight"].to_numpy(dtype=float)
    figs["weights"] = _data_uri(figures.weight_histogram(weights / weights.sum()))
    positive = run_config["data"].get("positive_class")
    faces = weighted[weighted["label"] == positive] if positive else weighted
    order = faces["sampling_weight"].sort_values()
    size = run_config["train"]["model"]["image_size"]
    for key, index in (("lowest", order.index[:N_GRID]), ("highest", order.index[::-1][:N_GRID])):
        images, failures = decode_images(faces.loc[index, "path"].tolist(), size)
        keep = [i for i in range(len(images)) if i not in failures]
        figs[f"grid:{key}"] = _data_uri(figures.image_row(images[keep]))
    return figs


def _slice_images(audit_dir: str | None, slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the audit's cluster slices, each with its example strip as a data URI."""
    out = []
    for s in slices:
        grid = Path(audit_dir) / s["example_grid"] if audit_dir and s.get("example_grid") else None
        out.append({**s, "image": _data_uri(grid.read_bytes()) if grid and grid.is_file() else ""})
    return out


def _outlier_rows(table: pd.DataFrame | None, size: int) -> list[dict[str, Any]]:
    """Return the highest-ranked readable outliers, each with a thumbnail."""
    if table is None:
        return []
    top = table[table["reason"] == ""].head(N_OUTLIERS)
    images, failures = decode_images(top["path"].tolist(), size)
    rows = []
    for i, (_, row) in enumerate(top.iterrows()):
        thumb = "" if i in failures else _data_uri(figures.image_row([images[i]]))
        rows.append({**row.to_dict(), "image": thumb})
    return rows


def _render(
    facts: ReportFacts,
    figs: dict[str, str],
    audit: dict | None,
    baseline_audit: dict | None,
    slices: list[dict],
    outlier_rows: list[dict],
) -> str:
    env = Environment(
        loader=PackageLoader("debias", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
    )
    env.filters["num"] = number
    env.filters["heat"] = _heat
    intersection = []
    disparities = []
    if audit is not None:
        last = audited_attributes(audit)
        if last and INTERSECTION in last[-1]:
            acc = accuracy_rows(audit)
            intersection = _heat_table(acc[acc.attribute == last[-1]], last[-1])
        distinct = [d for d in audit["disparities"] if not d.get("duplicate_of")]
        disparities = sorted(
            distinct,
            key=lambda d: (
                {"fail": 0, "pass": 1}.get(d["flag"], 2),
                not d.get("significant"),
                -abs(d["difference"] or 0),
            ),
        )
    template = env.get_template("report.html.j2")
    return template.render(
        f=facts,
        figs=figs,
        audit=audit,
        baseline_audit=baseline_audit,
        intersection=intersection,
        disparities=disparities,
        slices=slices,
        outliers=outlier_rows,
        version=debias.__version__,
    )


def _heat(value: float | None) -> str:
    """Return a background colour for an accuracy: white at 1.0, deep red at 0.7 and below."""
    if value is None or value != value:
        return "#eeeeee"
    t = float(np.clip((1.0 - value) / 0.3, 0, 1))
    return f"rgb(255,{int(255 - 150 * t)},{int(255 - 150 * t)})"


def _heat_table(rows: pd.DataFrame, attribute: str) -> dict[str, Any]:
    """Rows x columns of the two-way intersection's accuracies."""
    first, second = attribute.split(INTERSECTION, 1)
    split = rows["group"].str.split(INTERSECTION, n=1, expand=True)
    table = rows.assign(row=split[0], col=split[1])
    cols = sorted(table["col"].unique())
    cells = []
    for r in sorted(table["row"].unique()):
        line = []
        for c in cols:
            hit = table[(table.row == r) & (table.col == c)]
            line.append(hit.iloc[0].to_dict() if len(hit) else None)
        cells.append((r, line))
    return {"rows_name": first, "cols_name": second, "cols": cols, "cells": cells}


def _markdown(facts: ReportFacts) -> str:
    subject = facts.subject
    lines = [f"# Fairness report: {facts.name}", "", f"Created {facts.created}.", ""]
    digest = f", SHA-256 {subject.sha256}" if subject.sha256 else ""
    lines += [f"About `{subject.path}` ({subject.kind}{digest}).", ""]
    head = facts.headline
    if head is not None and facts.audit is not None:
        summary = facts.audit["summary"]
        worst = summary["worst_group"]
        significant = summary.get("failing_significant")
        lines += [
            f"- Overall accuracy: {number(head.overall_accuracy)}",
            f"- Worst group: {worst['attribute']} = {worst['group']}, accuracy "
            f"{number(worst['value'])} (95% CI {number(worst['ci_low'])}-"
            f"{number(worst['ci_high'])}, n={worst['n']})"
            if worst
            else "- Worst group: none judged",
            f"- Fairness checks failing: {summary['failing']} of {summary['judged']}"
            + (f", {significant} significantly" if significant is not None else ""),
        ]
        lines += [f"- {note}" for note in facts.audit["notes"] if note.startswith("Warning")]
        if facts.changes:
            lines += [
                "",
                f"Baseline -> this model on the same images (paired bootstrap intervals; "
                f"{facts.seeds} training run of each model, so training randomness is not in "
                "them):",
                "",
                "| group | baseline | this model | change (CI) |",
                "|---|---|---|---|",
            ]
            for r in facts.changes:
                name = (
                    r["attribute"]
                    if r["attribute"] == "overall"
                    else (
                        f"{r['attribute']}: {r['group']}"
                        if r["attribute"] == WORST
                        else f"{r['attribute']} = {r['group']}"
                    )
                )
                lines.append(
                    f"| {name} | {number(r['before'])} | {number(r['after'])} | "
                    f"{r['change']:+.3f} ({r['ci_low']:+.3f}, {r['ci_high']:+.3f}) |"
                )
    else:
        lines.append("No audit was given: pass --audit to include per-group results.")
    lines += ["", "See report.html for figures and report.json for every number."]
    return "\n".join(lines) + "\n"
