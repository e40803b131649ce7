"""The fairness report: a self-contained HTML file, the same facts as JSON, a Markdown summary.

``build_report(ReportConfig)`` reads a run folder (and optionally a baseline run, an audit folder
and an outlier scan) and writes ``report.html`` (inline CSS, images as data URIs, no scripts, no
network requests), ``report.json`` and ``report.md`` into ``reports/<name>/``. When a baseline
run and an audit are given, the baseline is audited with the same options so the two compare on
the same images. Everything from user data is escaped by jinja2's autoescaping.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

import debias
from debias import errors, figures
from debias import run as runio
from debias.audit import INTERSECTION, AuditConfig
from debias.audit_run import run_audit, versions
from debias.data import decode_images

N_GRID = 10  # faces per row in the highest / lowest sampling-weight grids
N_OUTLIERS = 12


@dataclass
class ReportConfig:
    """What goes into a report.

    Attributes
    ----------
    run : str
        The (debiased) run folder.
    baseline : str or None
        A plain-classifier run to compare with.
    audit : str or None
        An audit folder of ``run`` (``debias audit --out``).
    outliers : str or None
        An ``outliers.csv`` written by ``debias outliers`` (its JSON beside it).
    name : str or None
        Report name (default: the run folder's name).
    out : str or None
        Output folder (default ``reports/<name>``).
    """

    run: str
    baseline: str | None = None
    audit: str | None = None
    outliers: str | None = None
    name: str | None = None
    out: str | None = None


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode() if png else ""


def _audit_json(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "audit.json"
    if not path.is_file():
        raise errors.RunError(
            f"{folder}: not an audit folder (audit.json missing). "
            "Pass the --out folder of a `debias audit` run."
        )
    return json.loads(path.read_text())


def _accuracy_rows(audit: dict[str, Any]) -> pd.DataFrame:
    rows = pd.DataFrame(audit["by_group"])
    return rows[rows["metric"] == "accuracy"].astype({"ci_low": float, "ci_high": float})


def training_composition(
    samples: pd.DataFrame, attributes: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Training images per group and each group's share of the last epoch's sampling weight.

    Parameters
    ----------
    samples : pandas.DataFrame
        A run's ``samples.csv``: split, sampling_weight and the run's group columns.
    attributes : list of str
        Audited attributes; an intersection is named ``"a & b"``. Those whose columns the run did
        not record are left out.

    Returns
    -------
    dict
        ``{attribute: {group: {"n", "image_share", "draw_share"}}}``: training images, their
        share of the images and of the weight among rows with a value for the attribute; the two
        shares side by side show what resampling did.
    """
    train = samples[samples["split"] == "train"]
    weight = pd.to_numeric(train["sampling_weight"], errors="coerce").fillna(0.0)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for attribute in attributes:
        columns = attribute.split(INTERSECTION)
        if not set(columns) <= set(train.columns):
            continue
        values = train[columns].astype(str)
        # Rows missing a value (non-faces have no skin tone) belong to no group; shares are of
        # the rows that have one, so a column of shares sums to 1.
        known = (values != "").all(axis=1)
        key = values.agg(INTERSECTION.join, axis=1)[known]
        total = weight[known].sum()
        out[attribute] = {
            group: {
                "n": int((key == group).sum()),
                "image_share": float((key == group).mean()),
                "draw_share": float(weight[key.index[key == group]].sum() / total),
            }
            for group in sorted(key.unique())
        }
    return out


def headline_numbers(audit: dict[str, Any]) -> dict[str, float | None]:
    """Overall accuracy, worst group, variance across the finest groups (%²) and overall FPR."""
    acc = _accuracy_rows(audit)
    overall = float(acc[acc.attribute == "overall"]["value"].iloc[0])
    groups = acc[(acc.attribute != "overall") & acc.judged]
    finest = groups[groups.attribute == groups.attribute.iloc[-1]] if len(groups) else groups
    rows = pd.DataFrame(audit["by_group"])
    fpr = rows[(rows.attribute == "overall") & (rows.metric == "fpr")]["value"]
    worst = audit["summary"]["worst_group"]  # the audit's own choice: lowest judged accuracy
    return {
        "overall_accuracy": overall,
        "worst_group_accuracy": float(worst["value"]) if worst else None,
        "variance_across_groups": float(np.var(finest["value"] * 100)) if len(finest) else None,
        "false_positive_rate": float(fpr.iloc[0]) if len(fpr) and fpr.notna().any() else None,
    }


def build_report(config: ReportConfig) -> Path:
    """Write ``report.html``, ``report.json`` and ``report.md``; return the HTML's path.

    Raises
    ------
    RunError
        When a run or audit folder is missing or incomplete.
    """
    run_config = runio.read_config(config.run)
    name = config.name or Path(config.run).resolve().name
    out = Path(config.out or Path("reports") / name)
    audit = _audit_json(config.audit) if config.audit else None
    baseline_config = runio.read_config(config.baseline) if config.baseline else None
    metrics = {"debiased": runio.read_metrics(config.run)}
    if config.baseline:
        metrics["baseline"] = runio.read_metrics(config.baseline)
    out.mkdir(parents=True, exist_ok=True)

    facts: dict[str, Any] = {
        "name": name,
        "created": datetime.now().isoformat(timespec="seconds"),
        "versions": versions(),
        "run": str(config.run),
        "baseline": config.baseline,
        "train_config": run_config["train"],
        "data": run_config["data"],
    }
    figs: dict[str, str] = {}

    # Headline and per-group results, from the audit; the baseline audited the same way.
    baseline_audit = None
    if audit is not None:
        facts["audit"] = {
            k: audit[k] for k in ("config", "n", "classes", "pos_label", "summary", "notes")
        }
        facts["headline"] = headline_numbers(audit)
        if config.baseline:
            audit_config = AuditConfig(**audit["config"])
            baseline_config_audit = dataclasses.replace(
                audit_config,
                model=config.baseline,
                embed_with=None,
                out=str(out / "baseline-audit"),
            )
            baseline_audit = _audit_json(run_audit(baseline_config_audit).out)
            facts["baseline_headline"] = headline_numbers(baseline_audit)
        acc = _accuracy_rows(audit)
        overall = facts["headline"]["overall_accuracy"]
        attributes = [a for a in acc.attribute.unique() if a != "overall"]
        for attribute in attributes:
            rows = acc[acc.attribute == attribute]
            figs[f"bars:{attribute}"] = _data_uri(
                figures.group_bars(rows, f"accuracy by {attribute}", reference=overall)
            )
        slices = [s for s in audit.get("slices", []) if s.get("kind") == "cluster"]
        for s in slices:
            grid = Path(config.audit) / s["example_grid"] if s.get("example_grid") else None
            s["image"] = _data_uri(grid.read_bytes()) if grid and grid.is_file() else ""
        facts["slices"] = [{k: v for k, v in s.items() if k != "image"} for s in slices]
        facts["density_deciles"] = [s for s in audit.get("slices", []) if s["kind"] != "cluster"]
    else:
        slices = []

    # What the DB-VAE learned.
    figs["curves"] = _data_uri(figures.training_curves(metrics))
    figs["ess"] = _data_uri(figures.ess_curve(metrics["debiased"]))
    samples = pd.read_csv(Path(config.run) / runio.SAMPLES, keep_default_na=False)
    if audit is not None:
        facts["training_composition"] = training_composition(samples, attributes)
    weighted = samples[pd.to_numeric(samples["sampling_weight"], errors="coerce").notna()]
    weights = weighted["sampling_weight"].astype(float).to_numpy()
    figs["weights"] = _data_uri(figures.weight_histogram(weights / weights.sum()))
    positive = run_config["data"].get("positive_class")
    faces = weighted[weighted["label"] == positive] if positive else weighted
    order = faces["sampling_weight"].astype(float).sort_values()
    size = run_config["train"]["model"]["image_size"]
    for key, index in (("lowest", order.index[:N_GRID]), ("highest", order.index[::-1][:N_GRID])):
        images, failures = decode_images(faces.loc[index, "path"].tolist(), size)
        keep = [i for i in range(len(images)) if i not in failures]
        figs[f"grid:{key}"] = _data_uri(figures.image_row(images[keep]))
    skipped = pd.read_csv(Path(config.run) / runio.SKIPPED, keep_default_na=False)
    facts["skipped"] = skipped.head(20).to_dict("records")
    facts["n_skipped"] = len(skipped)
    facts["training"] = {
        "epochs": len(metrics["debiased"]),
        "final": metrics["debiased"][-1] if metrics["debiased"] else None,
        "baseline_final": metrics["baseline"][-1] if metrics.get("baseline") else None,
    }

    # Outliers.
    outlier_rows: list[dict[str, Any]] = []
    if config.outliers:
        csv = Path(config.outliers)
        if not csv.is_file():
            raise errors.RunError(errors.NO_SUCH_FILE.format(path=csv))
        # Read as text: with no unreadable rows the column is all empty and would parse as float.
        table = pd.read_csv(csv, dtype={"reason": str})
        table["reason"] = table["reason"].fillna("")
        summary = json.loads(csv.with_suffix(".json").read_text())
        facts["outliers"] = {k: v for k, v in summary.items() if k != "config"}
        top = table[table["reason"] == ""].head(N_OUTLIERS)
        images, failures = decode_images(top["path"].tolist(), size)
        for i, (_, row) in enumerate(top.iterrows()):
            thumb = "" if i in failures else _data_uri(figures.image_row([images[i]]))
            outlier_rows.append({**row.to_dict(), "image": thumb})

    facts["model_card"] = _model_card(run_config, baseline_config, audit)
    html = _render(facts, figs, audit, baseline_audit, slices, outlier_rows)
    runio.atomic_write(out / "report.html", lambda fh: fh.write(html.encode()))
    runio.write_json(out / "report.json", facts)
    markdown = _markdown(facts)
    runio.atomic_write(out / "report.md", lambda fh: fh.write(markdown.encode()))
    return out / "report.html"


def _model_card(
    run_config: dict[str, Any], baseline_config: dict[str, Any] | None, audit: dict | None
) -> dict[str, Any]:
    train = run_config["train"]
    data = run_config["data"]
    small = []
    if audit is not None:
        small = sorted(
            {f"{r['attribute']} = {r['group']}" for r in audit["by_group"] if not r["judged"]}
        )
    return {
        "intended_use": f"Classifying images into {', '.join(data['classes'])}. Trained with the "
        "DB-VAE, which resamples rare faces without reading group labels.",
        "training_data": f"{data['source']} ({data['layout']}): {data['n_train']} training and "
        f"{data['n_val']} validation images, {data['n_skipped']} unreadable files skipped.",
        "method": f"{'plain classifier' if train['baseline'] else 'DB-VAE'}, {train['epochs']} "
        f"epochs, latent {train['model']['latent_dim']}, {train['combine']} rule, ESS fraction "
        f"{train['ess_fraction']}, seed {train['seed']}.",
        "evaluation_data": (audit["config"].get("data") or audit["config"].get("labels") or "")
        if audit
        else "not audited",
        "groups": "Group labels come from the data's own attributes "
        f"({', '.join(data['group_columns']) or 'none'}); they are used for evaluation only.",
        "caveats": [
            "Groups smaller than the audit's minimum size are reported but not judged"
            + (f": {', '.join(small)}." if small else "."),
            "Many groups and metrics are compared at once: some intervals will exclude the "
            "reference by chance (multiple comparisons); read single failures with care.",
            "Group labels are as good as the data's annotation; self-reported and annotated "
            "attributes differ.",
        ],
    }


def _render(
    facts: dict[str, Any],
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
    env.filters["num"] = _num
    env.filters["heat"] = _heat
    intersection = []
    disparities = []
    if audit is not None:
        acc = _accuracy_rows(audit)
        last = [a for a in acc.attribute.unique() if a != "overall"]
        if last and INTERSECTION in last[-1]:
            intersection = _heat_table(acc[acc.attribute == last[-1]], last[-1])
        disparities = sorted(
            audit["disparities"],
            key=lambda d: ({"fail": 0, "pass": 1}.get(d["flag"], 2), -abs(d["difference"] or 0)),
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


def _num(value: Any, digits: int = 3) -> str:
    """Format a number for the report; missing or undefined values show as a dash."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    return "–" if number != number else f"{number:.{digits}f}"


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


def _markdown(facts: dict[str, Any]) -> str:
    lines = [f"# Fairness report: {facts['name']}", "", f"Created {facts['created']}.", ""]
    head = facts.get("headline")
    if head:
        worst = facts["audit"]["summary"]["worst_group"]
        lines += [
            f"- Overall accuracy: {head['overall_accuracy']:.3f}",
            f"- Worst group: {worst['attribute']} = {worst['group']}, accuracy "
            f"{worst['value']:.3f} (95% CI {worst['ci_low']:.3f}-{worst['ci_high']:.3f}, "
            f"n={worst['n']})"
            if worst
            else "- Worst group: none judged",
            f"- Fairness checks failing: {facts['audit']['summary']['failing']} of "
            f"{facts['audit']['summary']['judged']}",
        ]
        base = facts.get("baseline_headline")
        if base:
            lines += ["", "| | baseline | debiased |", "|---|---|---|"]
            for key, value in head.items():
                b = base.get(key)
                lines.append(
                    f"| {key.replace('_', ' ')} | {'–' if b is None else f'{b:.3f}'} | "
                    f"{'–' if value is None else f'{value:.3f}'} |"
                )
    else:
        lines.append("No audit was given: pass --audit to include per-group results.")
    lines += ["", "See report.html for figures and report.json for every number."]
    return "\n".join(lines) + "\n"
