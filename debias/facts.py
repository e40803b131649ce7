"""The report's facts: typed, read from run, audit and outliers folders, never recomputed.

:func:`gather_facts` reads the folders a report is about and returns :class:`ReportFacts`; the
report job renders them as HTML and Markdown and saves them as ``report.json``. Nothing here
trains or audits: a baseline comparison needs the baseline's audit folder, made by the caller.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from debias import errors, files, runfolder
from debias.fairness.audit import INTERSECTION
from debias.jobs.audit import AUDIT_FILE, AuditConfig


@dataclass
class Headline:
    """The numbers a reviewer reads first, from one audit."""

    overall_accuracy: float
    worst_group_accuracy: float | None  # the audit's own choice: lowest judged accuracy
    variance_across_groups: float | None  # across the finest judged groups, in percent squared
    false_positive_rate: float | None


@dataclass
class ModelCard:
    """A model card (Mitchell et al., 2019) from what the run and the audit record."""

    intended_use: str
    training_data: str
    method: str
    evaluation_data: str
    groups: str
    caveats: list[str]


@dataclass
class ReportFacts:
    """Everything a report states; ``report.json`` is :meth:`to_dict`."""

    name: str
    created: str
    versions: dict[str, str]
    run: str
    baseline: str | None
    train_config: dict[str, Any]
    data: dict[str, Any]
    model_card: ModelCard
    n_skipped: int
    skipped: list[dict[str, Any]]
    training: dict[str, Any]
    audit: dict[str, Any] | None = None  # config, n, classes, pos_label, summary, notes
    headline: Headline | None = None
    baseline_audit: str | None = None  # the folder the baseline's numbers come from
    baseline_headline: Headline | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)
    density_deciles: list[dict[str, Any]] = field(default_factory=list)
    training_composition: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    outliers: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``report.json``)."""
        return dataclasses.asdict(self)


def read_audit(folder: str | Path) -> dict[str, Any]:
    """Return an audit folder's ``audit.json``.

    Raises
    ------
    RunError
        When the folder holds no ``audit.json``.
    """
    path = Path(folder) / AUDIT_FILE
    if not path.is_file():
        raise errors.RunError(errors.NOT_AN_AUDIT.format(path=folder))
    audit = files.read_json(path, RERUN_AUDIT)
    problem = _audit_problem(audit)
    if problem:
        raise files.damaged(path, problem, RERUN_AUDIT)
    return audit


RERUN_AUDIT = "Run debias audit again into this folder."
_AUDIT_KEYS = {"config": dict, "n": int, "classes": list, "summary": dict, "notes": list}
_AUDIT_KEYS |= {"by_group": list, "disparities": list}
_ROW_KEYS = {"attribute", "group", "metric", "value", "ci_low", "ci_high", "judged"}
_SUMMARY_KEYS = {"worst_group", "failing", "judged"}


def _audit_problem(audit: dict[str, Any]) -> str | None:
    """Say what makes an ``audit.json`` unusable (a missing or mistyped part), or return None."""
    for key, kind in _AUDIT_KEYS.items():
        if not isinstance(audit.get(key), kind):
            return f"lacks {key!r} (or it is not a {kind.__name__})"
    rows = audit["by_group"]
    if not rows or not all(isinstance(r, dict) and _ROW_KEYS <= r.keys() for r in rows):
        return "has by_group rows without " + ", ".join(sorted(_ROW_KEYS))
    if not any(r["attribute"] == "overall" and r["metric"] == "accuracy" for r in rows):
        return "has no overall accuracy"
    numbers = [r[k] for r in rows for k in ("value", "ci_low", "ci_high")]
    if not all(v is None or isinstance(v, int | float) for v in numbers):
        return "has a by_group value that is not a number"
    if not _SUMMARY_KEYS <= audit["summary"].keys():
        return "has a summary without " + ", ".join(sorted(_SUMMARY_KEYS))
    try:
        AuditConfig.from_dict(audit["config"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return "has a config this version cannot read"
    return None


def accuracy_rows(audit: dict[str, Any]) -> pd.DataFrame:
    """Return the audit's accuracy rows (overall, every group and intersection)."""
    rows = pd.DataFrame(audit["by_group"])
    return rows[rows["metric"] == "accuracy"].astype({"ci_low": float, "ci_high": float})


def audited_attributes(audit: dict[str, Any]) -> list[str]:
    """Return the audit's attributes in its order, intersections last; ``overall`` left out."""
    return [a for a in accuracy_rows(audit).attribute.unique() if a != "overall"]


def headline_numbers(audit: dict[str, Any]) -> Headline:
    """Overall accuracy, worst group, variance across the finest groups (%²) and overall FPR."""
    acc = accuracy_rows(audit)
    overall = float(acc[acc.attribute == "overall"]["value"].iloc[0])
    groups = acc[(acc.attribute != "overall") & acc.judged]
    finest = groups[groups.attribute == groups.attribute.iloc[-1]] if len(groups) else groups
    rows = pd.DataFrame(audit["by_group"])
    fpr = rows[(rows.attribute == "overall") & (rows.metric == "fpr")]["value"]
    worst = audit["summary"]["worst_group"]
    return Headline(
        overall_accuracy=overall,
        worst_group_accuracy=float(worst["value"]) if worst else None,
        variance_across_groups=float(np.var(finest["value"] * 100)) if len(finest) else None,
        false_positive_rate=float(fpr.iloc[0]) if len(fpr) and fpr.notna().any() else None,
    )


def training_composition(
    samples: pd.DataFrame, attributes: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Training images per group and each group's share of the last epoch's sampling weight.

    Parameters
    ----------
    samples : pandas.DataFrame
        A run's ``samples.csv`` (:func:`debias.runfolder.read_samples`).
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
    weight = train["sampling_weight"].fillna(0.0)
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


def model_card(run_config: dict[str, Any], audit: dict[str, Any] | None) -> ModelCard:
    """Return the run's model card, with the audit's evaluation data and small groups."""
    train = run_config["train"]
    data = run_config["data"]
    small = []
    if audit is not None:
        small = sorted(
            {f"{r['attribute']} = {r['group']}" for r in audit["by_group"] if not r["judged"]}
        )
    return ModelCard(
        intended_use=f"Classifying images into {', '.join(data['classes'])}. Trained with the "
        "DB-VAE, which resamples faces without reading group labels.",
        training_data=f"{data['source']} ({data['layout']}): {data['n_train']} training and "
        f"{data['n_val']} validation images, {data['n_skipped']} unreadable files skipped.",
        method=f"{'plain classifier' if train['baseline'] else 'DB-VAE'}, {train['epochs']} "
        f"epochs, latent {train['model']['latent_dim']}, "
        + _weighting_words(train)
        + f", seed {train['seed']}.",
        evaluation_data=(audit["config"].get("data") or audit["config"].get("labels") or "")
        if audit
        else "not audited",
        groups="Group labels come from the data's own attributes "
        f"({', '.join(data['group_columns']) or 'none'}); they are used for evaluation only.",
        caveats=[
            "Groups smaller than the audit's minimum size are reported but not judged"
            + (f": {', '.join(small)}." if small else "."),
            "Many groups and metrics are compared at once: some intervals will exclude the "
            "reference by chance (multiple comparisons); read single failures with care.",
            "Group labels are as good as the data's annotation; self-reported and annotated "
            "attributes differ.",
        ],
    )


def _weighting_words(train: dict[str, Any]) -> str:
    """How a run weighted its draws, in words (runs saved before error feedback: histograms)."""
    histograms = (
        f"latent histograms ({train['combine']} rule, ESS fraction {train['ess_fraction']})"
    )
    weighting = train.get("weighting", "rarity")
    if train["baseline"] or weighting == "rarity":
        return histograms
    errors = (
        f"error feedback (the errors of epoch {train['error_epoch']} get "
        f"{train['error_share']:.0%} of each class's draws)"
    )
    return errors + (f" with {histograms}" if weighting == "errors+rarity" else "")


def gather_facts(
    run: str | Path,
    *,
    name: str,
    versions: dict[str, str],
    baseline: str | Path | None = None,
    audit: dict[str, Any] | None = None,
    baseline_audit: str | Path | None = None,
    outliers: dict[str, Any] | None = None,
) -> ReportFacts:
    """Read a run folder (and the audits and outlier summary given) into :class:`ReportFacts`.

    Parameters
    ----------
    run : path-like
        The run folder the report is about.
    name : str
        The report's name.
    versions : dict
        Package versions to record.
    baseline : path-like, optional
        A plain-classifier run to compare with.
    audit : dict, optional
        The run's ``audit.json`` (:func:`read_audit`).
    baseline_audit : path-like, optional
        An audit folder of ``baseline`` on the same images with the same options.
    outliers : dict, optional
        An outliers JSON (without its ``config``).
    """
    run_config = runfolder.read_config(run)
    metrics = runfolder.read_metrics(run)
    baseline_metrics = runfolder.read_metrics(baseline) if baseline else []
    skipped = runfolder.read_skipped(run)
    facts = ReportFacts(
        name=name,
        created=datetime.now().isoformat(timespec="seconds"),
        versions=versions,
        run=str(run),
        baseline=str(baseline) if baseline else None,
        train_config=run_config["train"],
        data=run_config["data"],
        model_card=model_card(run_config, audit),
        n_skipped=len(skipped),
        skipped=skipped.head(20).to_dict("records"),
        training={
            "epochs": len(metrics),
            "final": metrics[-1] if metrics else None,
            "baseline_final": baseline_metrics[-1] if baseline_metrics else None,
        },
        outliers=outliers,
    )
    if audit is not None:
        facts.audit = {
            k: audit[k] for k in ("config", "n", "classes", "pos_label", "summary", "notes")
        }
        facts.headline = headline_numbers(audit)
        if baseline_audit is not None:
            facts.baseline_audit = str(baseline_audit)
            facts.baseline_headline = headline_numbers(read_audit(baseline_audit))
        slices = audit.get("slices", [])
        facts.slices = [s for s in slices if s.get("kind") == "cluster"]
        facts.density_deciles = [s for s in slices if s.get("kind") != "cluster"]
        samples = runfolder.read_samples(run)
        facts.training_composition = training_composition(samples, audited_attributes(audit))
    return facts
