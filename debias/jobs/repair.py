"""The ``debias repair`` job: a model and a few group-labelled faces in, the model repaired out.

The model is a debias run folder, a ``torch.export`` program (``.pt2``) or an ONNX file; the
labelled faces come in a labels CSV (or any layout ``debias train`` reads) with the class and the
group columns. The job decodes the faces, reads the features the model's last linear layer sees,
refits that layer (:func:`debias.refit.fit_layer`) and writes, as one set into ``out``:

- the model in the format it came in: a run folder (its checkpoint's class rows replaced; the
  model card says so), or the ``.pt2`` / ``.onnx`` file with the layer's weights replaced;
- ``repair.json``: faces per cell, the chosen C, both layers' worst cells, and whether the layer
  was replaced. When the new layer's cross-validated worst cell is not above the old one's, the
  model is written unchanged and ``repaired`` is false.

With ``eval_labels`` the old and the repaired model are both audited on those other faces
(``audit-before/`` and ``audit/``), for a report's baseline -> model comparison.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from debias import errors, files, runfolder
from debias.auditfolder import AuditConfig
from debias.data import load_data
from debias.exported import ExportLayer, OnnxLayer
from debias.fairness.audit import INTERSECTION, AuditOptions
from debias.jobs.audit import write_audit
from debias.jobs.report import ReportConfig, write_report
from debias.lastlayer import LastLayerRepair
from debias.predict import is_export_archive, normaliser
from debias.progress import Listener, SilentListener
from debias.refit import LastLayer, RepairResult, fit_layer

REPAIR_FILE = "repair.json"  # written into every repair's output set; what marks it as one
REPAIR_WHAT = "a debias repair"
DEFAULT_IMAGE_SIZE = 64


@dataclass
class RepairConfig:
    """The inputs of the ``debias repair`` job.

    Attributes
    ----------
    model : str
        A debias run folder, a ``.pt2`` program or an ``.onnx`` file.
    labels : str
        The group-labelled faces: a labels CSV (or a folder in any layout ``train`` reads).
    groups : list of str
        Group columns; every class x group cell is balanced.
    target : str or None
        The class column (default ``label``).
    out : str or None
        Output folder (default ``reports/repair-<model name>``).
    eval_labels : str or None
        Other labelled faces to audit the old and the repaired model on.
    image_size : int or None
        Input side of a model file (default: what the file says, else 64).
    mean, std : list of float or None
        Normalisation of a model file (default 0 and 1).
    classes : list of str or None
        A model file's class names in output order (default: the data's, sorted).
    allow_empty_cells : bool
        Repair although a class has no labelled face of a group the others have.
    overwrite : bool
        Replace a repair already at ``out``.
    seed : int
        Seeds the cross-validation folds and the group-balanced draws.
    """

    model: str
    labels: str
    groups: list[str] = field(default_factory=list)
    target: str | None = None
    out: str | None = None
    eval_labels: str | None = None
    image_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None
    allow_empty_cells: bool = False
    overwrite: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Raise ConfigError for inputs no repair can use."""
        errors.check_option(
            bool(self.groups),
            "groups",
            self.groups,
            "names no group column: a repair balances the groups it is told",
            "Pass groups=race,gender: the group columns of the labelled faces.",
        )
        errors.check_option(
            Path(self.model).exists(),
            "model",
            self.model,
            "no such file or folder",
            "Pass a debias run folder, a .pt2 program or an .onnx file.",
        )


@dataclass
class RepairReport:
    """What :func:`write_repair` returns: where the set is, and what the repair decided."""

    out: Path
    model_path: Path
    summary: dict[str, Any]


def write_repair(config: RepairConfig, *, listener: Listener | None = None) -> RepairReport:
    """Repair a model's last layer with group-labelled faces and write the set to ``config.out``.

    Raises
    ------
    DebiasError
        For unusable options, labels or model files; an existing repair at ``out`` without
        ``overwrite``; empty cells unless ``allow_empty_cells``.
    """
    listener = listener or SilentListener()
    config.validate()
    model = Path(config.model)
    out = Path(config.out or Path("reports") / f"repair-{model.stem or model.name}")
    files.check_destination(out, REPAIR_FILE, REPAIR_WHAT, config.overwrite)  # before the work
    target = _RunTarget(model) if model.is_dir() else _FileTarget(model, config)
    data = load_data(
        labels=config.labels if Path(config.labels).is_file() else None,
        data=None if Path(config.labels).is_file() else config.labels,
        target=config.target,
        groups=config.groups,
        image_size=target.image_size,
        on_start=lambda n: listener.phase("decode", n),
        on_advance=listener.advance,
    )
    classes = target.classes or sorted(data.classes)
    names = np.asarray(data.classes)[data.y]
    features = target.features(torch.from_numpy(data.images))
    est, warnings = fit_layer(
        features,
        names,
        data.frame[list(config.groups)],
        target.weights(),
        classes,
        config.allow_empty_cells,
        LastLayerRepair(random_state=config.seed),
    )
    result = RepairResult(target.source, bool(est.improved_), est, classes, warnings)
    summary = {**result.summary(), "model": str(model), "labels": str(config.labels)}
    with files.output_set(out, REPAIR_FILE, REPAIR_WHAT, config.overwrite) as staging:
        written = target.write(staging, result, str(config.labels))
        files.write_json(staging / REPAIR_FILE, summary)
    report = RepairReport(out, out / written, summary)
    if config.eval_labels:
        report.summary["evaluation"] = _evaluate(config, report, listener)
        files.write_json(out / REPAIR_FILE, report.summary)
    return report


class _RunTarget:
    """A debias run: the DB-VAE's head rows, written back into a copy of the run folder."""

    def __init__(self, run: Path) -> None:
        self.run = run
        self.source, self.config = runfolder.load_model(run)
        self.layer = LastLayer.of(self.source, None, len(self.config["data"]["classes"]))
        self.classes = list(self.config["data"]["classes"])
        self.image_size = int(self.config["train"]["model"]["image_size"])

    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.layer.features(images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        return self.layer.weights()

    def write(self, staging: Path, result: RepairResult, labels: str) -> str:
        """Copy the run into ``staging`` with the head's class rows replaced; return ``""``."""
        for name in (runfolder.METRICS, runfolder.SAMPLES, runfolder.DENSITY, "skipped.csv"):
            if (self.run / name).is_file():
                shutil.copy2(self.run / name, staging / name)
        state = runfolder.load_checkpoint(self.run / runfolder.CHECKPOINT)
        if result.repaired:
            est = result.estimator
            fixed = self.layer.with_weights(est.coef_, est.intercept_)
            state = runfolder.with_model_weights(state, fixed.state_dict())
        runfolder.save_checkpoint(staging / runfolder.CHECKPOINT, state)
        config = dict(self.config, repair=result.card(labels))
        files.write_json(staging / runfolder.CONFIG, config)
        return ""  # the set is the run folder


class _FileTarget:
    """A ``.pt2`` program or an ONNX file, fed as the audit feeds it."""

    def __init__(self, path: Path, config: RepairConfig) -> None:
        self.path = path
        self.layer = ExportLayer(path) if is_export_archive(path) else OnnxLayer(path)
        self.source = path
        self.classes = config.classes
        self.image_size = config.image_size or self.layer.side or DEFAULT_IMAGE_SIZE
        self.feed = normaliser(config.mean or (0.0, 0.0, 0.0), config.std or (1.0, 1.0, 1.0))

    def features(self, images: torch.Tensor) -> np.ndarray:
        return self.layer.features(self.feed(images))

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        return self.layer.weights()

    def write(self, staging: Path, result: RepairResult, labels: str) -> str:
        """Write the file, repaired or as it was, into ``staging``; return its name."""
        dest = staging / self.path.name
        if result.repaired:
            self.layer.save(dest, result.estimator.coef_, result.estimator.intercept_)
        else:
            shutil.copy2(self.path, dest)
        return dest.name


def _evaluate(config: RepairConfig, report: RepairReport, listener: Listener) -> dict[str, Any]:
    """Audit the model before and after on the evaluation faces, and report the paired change."""
    worst = {}
    for name, model in (("audit-before", config.model), ("audit", str(report.model_path))):
        audit = write_audit(
            AuditConfig(
                model=model,
                labels=config.eval_labels,
                target=config.target,
                image_size=config.image_size,
                mean=config.mean,
                std=config.std,
                classes=config.classes,
                out=str(report.out / name),
                overwrite=True,
                options=AuditOptions(groups=list(config.groups), seed=config.seed),
            ),
            listener=listener,
        )
        wide = audit.result.wide(INTERSECTION.join(config.groups))
        worst[name] = float(wide["accuracy"].min())
    write_report(
        ReportConfig(
            model=str(report.model_path),
            audit=str(report.out / "audit"),
            baseline_audit=str(report.out / "audit-before"),
            name=f"{Path(config.model).name} repaired",
            out=str(report.out / "report"),
            overwrite=True,
        ),
        listener=listener,
    )
    return {
        "labels": config.eval_labels,
        "worst_group_accuracy_before": worst["audit-before"],
        "worst_group_accuracy_after": worst["audit"],
        "audits": ["audit-before", "audit"],
        "report": "report/report.html",
    }
