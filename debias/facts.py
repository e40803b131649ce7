"""The report's facts: typed, read from run, audit and outliers folders, never recomputed.

A report is about one :class:`Subject`: a debias run, a model file (TorchScript, ONNX,
``torch.export``) or a predictions CSV — whatever its audit recorded. :func:`report_subject`
decides it and refuses an audit that did not come from the model named (their SHA-256 differ).
:func:`gather_facts` reads the folders and returns :class:`ReportFacts`; the report job renders
them as HTML and Markdown and saves them as ``report.json``. Nothing here trains or audits: a
baseline comparison needs the baseline's audit folder, made by the caller.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from debias import errors, files, methods, runfolder
from debias.auditfolder import AUDIT_FILE, PREDICTIONS, AuditConfig
from debias.fairness.audit import INTERSECTION
from debias.fairness.paired import paired_changes


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
class Subject:
    """What a report is about, as its audit recorded it (``audit.json``'s ``model``).

    Attributes
    ----------
    path : str
        The run folder, model file or predictions CSV.
    kind : str
        ``debias-run``, ``torchscript``, ``onnx``, ``torch-export`` or ``predictions``.
    sha256 : str or None
        Of the model file (a run's ``checkpoint.pt``) or the CSV; None for audits written before
        this was recorded.
    input_size, mean, std, normalisation_assumed, classes
        How the audit fed the model: image side, per-channel normalisation (None for a run, which
        preprocesses itself), whether the normalisation was assumed rather than given, and the
        class order of its outputs.
    """

    path: str
    kind: str
    sha256: str | None = None
    input_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    normalisation_assumed: bool = False
    classes: list[str] = field(default_factory=list)

    @property
    def is_run(self) -> bool:
        """Whether the subject is a debias run (its training can be reported)."""
        return self.kind == "debias-run"


@dataclass
class ReportFacts:
    """Everything a report states; ``report.json`` is :meth:`to_dict`."""

    name: str
    created: str
    versions: dict[str, str]
    subject: Subject
    model_card: ModelCard
    run: str | None = None  # the run folder when the subject is a debias run that still exists
    baseline: str | None = None
    train_config: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    n_skipped: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None  # config, n, classes, pos_label, summary, notes
    headline: Headline | None = None
    baseline_audit: str | None = None  # the folder the baseline's numbers come from
    baseline_headline: Headline | None = None
    # baseline -> debiased per group on the same images (paired bootstrap), and how many
    # training runs (seeds) of each model stand behind them
    changes: list[dict[str, Any]] = field(default_factory=list)
    seeds: int = 1
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


def model_card(
    run_config: dict[str, Any] | None, audit: dict[str, Any] | None, subject: Subject
) -> ModelCard:
    """Return the model card: from the run when there is one, else from what the audit recorded."""
    small = []
    if audit is not None:
        small = sorted(
            {f"{r['attribute']} = {r['group']}" for r in audit["by_group"] if not r["judged"]}
        )
    caveats = [
        "Groups smaller than the audit's minimum size are reported but not judged"
        + (f": {', '.join(small)}." if small else "."),
        "Many groups and metrics are compared at once: some intervals will exclude the "
        "reference by chance (multiple comparisons); read single failures with care.",
        "Group labels are as good as the data's annotation; self-reported and annotated "
        "attributes differ.",
    ]
    config = audit["config"] if audit else {}
    evaluation = config.get("data") or config.get("labels") or config.get("predictions") or ""
    if run_config is None:
        return _external_card(subject, audit, evaluation or "not audited", caveats)
    train = run_config["train"]
    data = run_config["data"]
    return ModelCard(
        intended_use=f"Classifying images into {', '.join(data['classes'])}. Trained with the "
        "DB-VAE, which resamples faces without reading group labels.",
        training_data=f"{data['source']} ({data['layout']}): {data['n_train']} training and "
        f"{data['n_val']} validation images, {data['n_skipped']} unreadable files skipped.",
        method=f"{'plain classifier' if train['baseline'] else 'DB-VAE'}, {train['epochs']} "
        f"epochs, latent {train['model']['latent_dim']}, "
        + _weighting_words(train)
        + SELECT_WORDS[train.get("select", "last")]
        + f", seed {train['seed']}."
        + _repair_words(run_config.get("repair")),
        evaluation_data=evaluation or "not audited",
        groups="Group labels come from the data's own attributes "
        f"({', '.join(data['group_columns']) or 'none'}); they are used for evaluation only"
        + (", and to repair the last layer." if run_config.get("repair") else "."),
        caveats=caveats,
    )


def _repair_words(repair: dict[str, Any] | None) -> str:
    """Return the model card's sentence about a last-layer repair (``debias repair``), if any."""
    if not repair:
        return ""
    if repair["repaired"]:
        return (
            f" Then its last layer was refit on {repair['labelled']} group-labelled faces "
            f"({repair['labels']}; group-balanced draws, C={repair['C']:g})."
        )
    return (
        f" A last-layer repair from {repair['labelled']} group-labelled faces ({repair['labels']}) "
        "was tried and not kept: it did not beat the layer as it was on those faces."
    )


KIND_WORDS = {
    "torchscript": "a TorchScript model file",
    "onnx": "an ONNX model file",
    "torch-export": "a torch.export program (.pt2)",
    "predictions": "a CSV of predictions made elsewhere",
    "debias-run": "a debias run whose folder is no longer where the audit found it",
}


def _external_card(
    subject: Subject, audit: dict[str, Any] | None, evaluation: str, caveats: list[str]
) -> ModelCard:
    """Return a model card of a model debias did not train, from what its audit recorded."""
    digest = f"SHA-256 {subject.sha256}" if subject.sha256 else "no SHA-256 recorded"
    feed = ""
    if subject.kind not in ("predictions", "debias-run"):
        feed = f"; fed {subject.input_size}x{subject.input_size} RGB images as pixels/255"
        feed += f", then (x - {subject.mean}) / {subject.std}"
    if subject.normalisation_assumed:
        caveats = [
            "The input normalisation was assumed (mean 0, std 1), not given: a model trained "
            "with another (ImageNet's, say) scores worse here than it would in use. Audit again "
            "with --mean and --std.",
            *caveats,
        ]
    groups = ", ".join((audit or {}).get("config", {}).get("options", {}).get("groups", []))
    return ModelCard(
        intended_use="Classifying images into "
        f"{', '.join(subject.classes) or 'its classes'} (as audited).",
        training_data="Not known to debias: this model was not trained by it.",
        method=f"{KIND_WORDS.get(subject.kind, subject.kind)}: {subject.path} ({digest}{feed}).",
        evaluation_data=evaluation,
        groups=f"Group labels come from the audited data ({groups or 'none'}); they are used "
        "for evaluation only.",
        caveats=caveats,
    )


SELECT_WORDS = {
    "last": "",
    "worst-group": ", keeping the epoch with the best worst class x group accuracy on half of the "
    "group-labelled faces",
    "worst-class": ", keeping the epoch with the best worst-class validation accuracy",
    "worst-cluster": ", keeping the epoch with the best worst accuracy over latent clusters of "
    "each class's validation images",
}


def _weighting_words(train: dict[str, Any]) -> str:
    """How a run weighted its draws, in words: its method's own sentence."""
    config = methods.config_from_dict(train)
    return methods.describe(methods.method_of(config), config.epochs)


def _add_training(
    facts: ReportFacts, run: str | Path, run_config: dict[str, Any], baseline: str | Path | None
) -> None:
    """Add what a debias run's folder says: its settings, data, skipped files and training."""
    metrics = runfolder.read_metrics(run)
    is_run = baseline is not None and Path(baseline).is_dir()
    baseline_metrics = runfolder.read_metrics(baseline) if is_run else []
    skipped = runfolder.read_skipped(run)
    facts.train_config = run_config["train"]
    facts.data = run_config["data"]
    facts.n_skipped = len(skipped)
    facts.skipped = skipped.head(20).to_dict("records")
    facts.training = {
        "epochs": len(metrics),
        "final": metrics[-1] if metrics else None,
        # the epoch whose weights are the run's model (--select), from 1
        "kept_epoch": metrics[-1].get("kept_epoch", len(metrics)) if metrics else None,
        "baseline_final": baseline_metrics[-1] if baseline_metrics else None,
    }


def report_subject(
    model: str | Path | None, audit: dict[str, Any] | None, audit_path: str | Path | None
) -> tuple[Subject, Path | None]:
    """Decide what a report is about; return it and the run folder (None unless a debias run).

    Parameters
    ----------
    model : path-like or None
        What the user named: a run folder or a model file; None to report on what was audited.
    audit : dict or None
        The audit's ``audit.json``.
    audit_path : path-like or None
        The audit folder, for messages.

    Raises
    ------
    DebiasError
        When there is nothing to report on, a model file comes without its audit, or the audit
        recorded another model than the one named (SHA-256 or, for older audits, path).
    """
    if model is None:
        if audit is None:
            raise errors.ConfigError(errors.REPORT_NEEDS_SUBJECT)
        subject = recorded_subject(audit)
        run = Path(subject.path)
        # The run is reported with its training only while it is the one that was audited.
        alive = subject.is_run and (run / runfolder.CONFIG).is_file()
        alive = alive and subject.sha256 in (None, _digest(run))
        return subject, run if alive else None
    path = Path(model)
    is_run = path.is_dir()
    if is_run:
        run_config = runfolder.read_config(path)
    elif not path.is_file():
        raise errors.RunError(errors.NO_SUCH_FILE.format(path=path))
    elif audit is None:
        raise errors.ConfigError(errors.REPORT_NEEDS_AUDIT.format(path=path))
    if audit is None:
        subject = Subject(
            str(path),
            "debias-run",
            _digest(path),
            int(run_config["train"]["model"]["image_size"]),
            classes=list(run_config["data"]["classes"]),
        )
        return subject, path
    subject = _audited_is(recorded_subject(audit), path, audit_path)
    return subject, path if is_run else None


def _audited_is(subject: Subject, path: Path, audit_path: str | Path | None) -> Subject:
    """Refuse an audit that recorded another model than ``path``; return it as ``path``."""
    digest = _digest(path)
    if subject.sha256 is not None and subject.sha256 != digest:
        why = "their SHA-256 differ"
    elif subject.sha256 is None and Path(subject.path).resolve() != path.resolve():
        why = "the audit recorded no SHA-256, and its path differs"
    else:
        return dataclasses.replace(subject, path=str(path), sha256=digest)
    raise errors.RunError(
        errors.AUDIT_NOT_OF_MODEL.format(
            audit=audit_path, audited=subject.path, model=path, why=why
        )
    )


def recorded_subject(audit: dict[str, Any]) -> Subject:
    """Return what an ``audit.json`` says it audited (older audits: its config's paths only)."""
    recorded = audit.get("model")
    if isinstance(recorded, dict):
        known = {f.name for f in dataclasses.fields(Subject)}
        return Subject(**{k: v for k, v in recorded.items() if k in known})
    config = audit["config"]
    path = config.get("model") or config.get("predictions") or ""
    kind = "predictions" if config.get("predictions") else "debias-run"
    if kind == "debias-run" and not Path(path).is_dir():
        kind = "torchscript" if Path(path).suffix in (".pt", ".pth") else Path(path).suffix[1:]
    return Subject(path, kind, None, classes=list(audit.get("classes", [])))


def _digest(path: Path) -> str | None:
    """SHA-256 of a model file, a run's checkpoint, or a CSV; None when there is none."""
    target = path / runfolder.CHECKPOINT if path.is_dir() else path
    return files.sha256(target) if target.is_file() else None


def baseline_changes(
    audit_dir: str | Path, baseline_dir: str | Path, audit: dict[str, Any]
) -> list[dict[str, Any]]:
    """Baseline -> debiased accuracy per group with paired bootstrap intervals, as table rows.

    Reads both audits' ``predictions.csv``; they must hold the same images in the same order
    (the same true labels, and the same paths when both have them).

    Raises
    ------
    DebiasError
        When the two audits were not made on the same images.
    """
    fix = RERUN_AUDIT
    for folder in (audit_dir, baseline_dir):
        if not (Path(folder) / PREDICTIONS).is_file():
            raise files.damaged(Path(folder) / PREDICTIONS, "is missing", fix)
    after = files.read_csv(Path(audit_dir) / PREDICTIONS, fix, {"y_true", "y_pred"}, dtype=str)
    before = files.read_csv(Path(baseline_dir) / PREDICTIONS, fix, {"y_true", "y_pred"}, dtype=str)
    why = ""
    if len(before) != len(after):
        why = f"{len(before)} and {len(after)} images"
    elif not before["y_true"].equals(after["y_true"]):
        why = "their true labels differ row by row"
    elif "path" in before and "path" in after and not before["path"].equals(after["path"]):
        why = "their image paths differ"
    if why:
        raise errors.DataError(
            errors.NOT_SAME_IMAGES.format(audit=audit_dir, baseline_audit=baseline_dir, why=why)
        )
    options = AuditConfig.from_dict(audit["config"]).options
    groups = [g for g in options.groups if g in after.columns]
    table = paired_changes(
        after["y_true"],
        before["y_pred"],
        after["y_pred"],
        after[groups].fillna(""),
        dataclasses.replace(options, groups=groups),
    )
    return table.to_dict("records")


def gather_facts(
    subject: Subject,
    *,
    name: str,
    versions: dict[str, str],
    run: str | Path | None = None,
    baseline: str | Path | None = None,
    audit: dict[str, Any] | None = None,
    baseline_audit: str | Path | None = None,
    outliers: dict[str, Any] | None = None,
) -> ReportFacts:
    """Read the run folder (if any), audits and outlier summary into :class:`ReportFacts`.

    Parameters
    ----------
    subject : Subject
        What the report is about (:func:`report_subject`).
    name : str
        The report's name.
    versions : dict
        Package versions to record.
    run : path-like, optional
        The subject's run folder, when it is a debias run: adds training, data and composition.
    baseline : path-like, optional
        A plain-classifier run (or what the baseline audit audited) to compare with.
    audit : dict, optional
        The subject's ``audit.json`` (:func:`read_audit`).
    baseline_audit : path-like, optional
        An audit folder of ``baseline`` on the same images with the same options.
    outliers : dict, optional
        An outliers JSON (without its ``config``).
    """
    run_config = runfolder.read_config(run) if run else None
    facts = ReportFacts(
        name=name,
        created=datetime.now().isoformat(timespec="seconds"),
        versions=versions,
        subject=subject,
        model_card=model_card(run_config, audit, subject),
        run=str(run) if run else None,
        baseline=str(baseline) if baseline else None,
        outliers=outliers,
    )
    if run is not None:
        _add_training(facts, run, run_config, baseline)
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
        if run is not None:
            samples = runfolder.read_samples(run)
            facts.training_composition = training_composition(samples, audited_attributes(audit))
    return facts
