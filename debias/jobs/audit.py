"""The ``debias audit`` job: get predictions, audit them per group, find slices, write the files.

``run_audit(AuditConfig)`` reads what is audited (a debias run, a TorchScript/ONNX model with
images, or a predictions CSV), audits it with :func:`debias.audit.audit`, discovers failing slices
with a DB-VAE's latents when one is available, and writes into the output folder:

- ``audit.json``: everything (inputs, versions, summary, tables);
- ``by_group.csv``, ``disparities.csv``, ``slices.csv``: the tables;
- ``predictions.csv``: the predictions audited (re-audit with ``--predictions``);
- ``slices/*.png``: example images of each slice, failures first.
"""

from __future__ import annotations

import dataclasses
import io
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import debias
from debias import errors, files, runfolder
from debias.auditfolder import AUDIT_FILE, AUDIT_WHAT, PREDICTIONS, AuditConfig
from debias.data import decode_images, load_data
from debias.device import select_device
from debias.encode import encode
from debias.fairness.audit import AuditResult, audit
from debias.fairness.groups import check_groups, suitable_groups
from debias.predict import (
    is_attribute,
    load_classifier,
    predict_images,
    predictions_table,
    read_predictions_csv,
)
from debias.progress import Listener, SilentListener
from debias.slices import density_deciles, find_slices, slice_table

DEFAULT_IMAGE_SIZE = 64


@dataclass
class AuditReport:
    """What :func:`write_audit` returns and writes.

    Attributes
    ----------
    out : pathlib.Path
        The output folder.
    result : AuditResult
        Per-group metrics and disparities.
    slices : pandas.DataFrame
        Ranked label-free slices (clusters, then density deciles); empty without an embedding.
    predictions : pandas.DataFrame
        The audited predictions.
    notes : list of str
        Things the reader should know (skipped files, the embedding used, fallbacks).
    """

    out: Path
    result: AuditResult
    slices: pd.DataFrame
    predictions: pd.DataFrame
    notes: list[str]


def write_audit(config: AuditConfig, *, listener: Listener | None = None) -> AuditReport:
    """Audit a classifier or a predictions CSV and write the results to ``config.out``.

    Parameters
    ----------
    config : AuditConfig
        What to audit and how.
    listener : Listener, optional
        Progress hooks (decoding, prediction, embedding).

    Returns
    -------
    AuditReport

    Raises
    ------
    DebiasError
        On bad options, unreadable inputs, a model file that is not TorchScript/ONNX (pickles are
        refused without being opened), or group columns that are unknown or empty.
    """
    listener = listener or SilentListener()
    _check_inputs(config)
    config.validate()
    out = Path(config.out or Path("reports") / datetime.now().strftime("audit-%Y%m%d-%H%M%S"))
    files.check_destination(out, AUDIT_FILE, AUDIT_WHAT, config.overwrite)  # before the work
    device = select_device(config.device)
    if config.predictions is not None:
        got = _from_predictions(config)
    else:
        got = _from_model(config, out, device, listener)
    table, source, notes, images = got.table, got.source, got.notes, got.images
    embedder = config.embed_with or (
        config.model if config.model and Path(config.model).is_dir() else None
    )
    if not got.groups and embedder is None:  # nothing to compare: an audit would pass vacuously
        columns = [c for c in table.columns if c not in ("y_true", "y_pred", "score")]
        raise errors.DataError(
            errors.NO_GROUPS.format(path=source, columns=", ".join(columns) or "none")
        )
    notes += degenerate_warnings(table["y_true"], table["y_pred"], source)
    options = dataclasses.replace(config.options, groups=got.groups)
    config = dataclasses.replace(config, options=options, out=str(out))
    result = audit(table["y_true"], table["y_pred"], table[got.groups], options, got.classes)
    slices = pd.DataFrame()
    if embedder is not None:
        if images is None:
            images = _images_for(table, embedder, notes, source)
        slices = _slices(table, images, embedder, config, device, listener, notes)
    else:
        notes.append(
            "No label-free slices: pass --embed-with RUN (a DB-VAE run folder) to find them."
        )
    with files.output_set(out, AUDIT_FILE, AUDIT_WHAT, config.overwrite) as staging:
        if config.predictions is None:
            files.write_csv(staging / "skipped.csv", got.skipped)
        slices = _with_examples(staging, slices, table, images)
        _write(staging, config, result, slices, table, notes, got.model_facts)
    return AuditReport(out, result, slices, table, notes)


@dataclass
class _Audited:
    """What the audit compares: the predictions table and what it was made from."""

    source: str
    table: pd.DataFrame  # y_true, y_pred (score), group columns, path
    groups: list[str]
    classes: list[str]
    model_facts: dict[str, Any]  # what was audited: file, hash, how it was fed
    notes: list[str] = field(default_factory=list)
    images: np.ndarray | None = None  # the decoded images, when a model predicted
    skipped: pd.DataFrame | None = None


def _from_predictions(config: AuditConfig) -> _Audited:
    """Read a predictions CSV made elsewhere."""
    source = str(config.predictions)
    table = read_predictions_csv(
        source,
        threshold=config.threshold,
        pos_label=config.options.pos_label,
        classes=config.classes,
    )
    candidates = [c for c in table.columns if is_attribute(c)]
    groups = _groups(table, config.options.groups, candidates, source)
    classes = sorted(set(table["y_true"]) | set(table["y_pred"]) | set(config.classes or []))
    facts = {"path": source, "kind": "predictions", "sha256": files.sha256(Path(source))}
    return _Audited(source, table, groups, classes, {**facts, "classes": classes})


def _from_model(
    config: AuditConfig, out: Path, device: torch.device, listener: Listener
) -> _Audited:
    """Decode the images, predict them with the model, and note how it was fed."""
    source = str(config.model)
    classifier = load_classifier(
        source, mean=config.mean or (0.0, 0.0, 0.0), std=config.std or (1.0, 1.0, 1.0),
        device=device,
    )  # fmt: skip
    size = config.image_size or classifier.image_size or DEFAULT_IMAGE_SIZE
    data = load_data(
        config.data,
        labels=config.labels,
        target=config.target,
        groups=config.options.groups or None,
        image_size=size,
        splits=[config.split] if config.split else None,
        min_classes=1,
        on_start=lambda n: listener.phase("decode", n),
        on_advance=listener.advance,
    )
    notes = _data_notes(config, data, out)
    listener.phase("predict", len(data))
    probabilities = predict_images(classifier, data.images, on_advance=listener.advance)
    classes = config.classes or classifier.classes or data.classes
    facts = _model_facts(config, classifier, size, classes)
    if facts["normalisation_assumed"]:
        notes.append(
            f"{source} was fed pixels/255 with mean {facts['mean']} and std {facts['std']} "
            "(assumed: no --mean/--std given). A model trained with another normalisation "
            "(ImageNet's: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225) scores worse here "
            "than in use"
        )
    table = predictions_table(probabilities, classes, data.frame, data.classes, source)
    groups = _groups(table, data.group_columns, data.group_columns, source)
    skipped = pd.DataFrame(data.skipped, columns=["path", "reason"])
    return _Audited(source, table, groups, list(classes), facts, notes, data.images, skipped)


def _data_notes(config: AuditConfig, data: Any, out: Path) -> list[str]:
    """Refuse a split the data lacks; note skipped files and a whole partition audited."""
    if config.split and "split" not in data.frame.columns:
        raise errors.ConfigError(
            errors.BAD_OPTION.format(
                option="split",
                value=config.split,
                problem=f"{data.source} has no train/val/test partition",
                fix="Drop split= to audit every image.",
            )
        )
    notes = []
    if data.skipped:
        notes.append(
            f"{len(data.skipped)} unreadable file(s) skipped; listed in {out / 'skipped.csv'}"
        )
    if not config.split and "split" in data.frame.columns:
        parts = ", ".join(sorted(set(data.frame["split"])))
        notes.append(
            f"Audited every part of {data.source}'s partition ({parts}); a model trained on "
            "it scores better on its own training images: pass --split test for held-out ones"
        )
    return notes


def _model_facts(
    config: AuditConfig, classifier: Any, size: int, classes: Sequence[str]
) -> dict[str, Any]:
    """Describe what the audit fed the model: file hash, input size, normalisation."""
    path = Path(config.model or "")
    weights = path / runfolder.CHECKPOINT if path.is_dir() else path
    external = classifier.kind != "debias-run"
    return {
        "path": str(path),
        "kind": classifier.kind,
        "sha256": files.sha256(weights),
        "input_size": size,
        # A debias run preprocesses itself; an external model gets pixels/255, then (x-mean)/std
        "mean": list(config.mean or (0.0, 0.0, 0.0)) if external else None,
        "std": list(config.std or (1.0, 1.0, 1.0)) if external else None,
        "normalisation_assumed": external and (config.mean is None or config.std is None),
        "classes": list(classes),
    }


DEGENERATE_SHARE = 0.95  # one class predicted for at least this share of the images
NEAR_CHANCE = 0.02  # accuracy within this of always predicting the most common class


def degenerate_warnings(y_true: pd.Series, y_pred: pd.Series, source: str | None) -> list[str]:
    """Warn when predictions look like a broken feed, not a model: one class, or chance accuracy.

    Both usually mean the model was fed wrongly (normalisation, image size, class order), and
    every per-group number would then describe the feed, not the model.
    """
    truth, pred = y_true.astype(str), y_pred.astype(str)
    if not len(truth):
        return []
    out = []
    predicted = pred.value_counts(normalize=True)
    common = truth.value_counts(normalize=True)
    if predicted.iloc[0] >= DEGENERATE_SHARE and common.iloc[0] < DEGENERATE_SHARE:
        out.append(
            f"Warning: {source} predicted {predicted.index[0]!r} for {predicted.iloc[0]:.0%} "
            f"of the images (the data has {common.get(predicted.index[0], 0):.0%}): check "
            "--mean/--std, --image-size and --classes"
        )
    accuracy = float((truth == pred).mean())
    if accuracy <= common.iloc[0] + NEAR_CHANCE:
        out.append(
            f"Warning: accuracy {accuracy:.3f} is no better than always predicting "
            f"{common.index[0]!r} ({common.iloc[0]:.3f}): check --mean/--std, --image-size "
            "and --classes"
        )
    return out


def _check_inputs(config: AuditConfig) -> None:
    if (config.model is None) == (config.predictions is None):
        raise errors.ConfigError(errors.MODEL_OR_PREDICTIONS)
    if config.model is not None and config.data is None and config.labels is None:
        raise errors.ConfigError(errors.MODEL_NEEDS_DATA)
    if config.embed_with is not None:
        runfolder.read_config(config.embed_with)  # fail now, not after predicting: is it a run?


def _groups(
    table: pd.DataFrame, given: list[str], candidates: list[str], source: str | None
) -> list[str]:
    """Return the audited group columns, checked to exist and to hold at least one value."""
    groups = check_groups(table, given) if given else suitable_groups(table, candidates)
    for column in groups:
        if (table[column].astype(str).str.strip() == "").all():
            raise errors.DataError(errors.EMPTY_GROUP.format(path=source, column=column))
    return groups


def _images_for(table: pd.DataFrame, embedder: str, notes: list[str], source: str | None):
    """Decode a predictions CSV's ``path`` column at the embedding run's image size."""
    if "path" not in table.columns:
        raise errors.DataError(
            errors.MISSING_COLUMN.format(
                path=source,
                column="path",
                columns=", ".join(table.columns),
                fix="Slices need the images: add their paths (relative to the CSV) as 'path', "
                "or drop embed_with=.",
            )
        )
    size = int(runfolder.read_config(embedder)["train"]["model"]["image_size"])
    images, failures = decode_images(table["path"].tolist(), size)
    if failures:
        first = next(iter(failures))
        notes.append(
            f"{len(failures)} image(s) of the predictions CSV unreadable (first: "
            f"{table['path'][first]}: {failures[first]}); they have blank embeddings"
        )
    return images


def _slices(
    table: pd.DataFrame,
    images: np.ndarray,
    embedder: str,
    config: AuditConfig,
    device: torch.device,
    listener: Listener,
    notes: list[str],
) -> pd.DataFrame:
    """Clusters of the DB-VAE latents ranked by error rate, then accuracy by density decile."""
    model, run_config = runfolder.load_model(embedder)
    model = model.to(device)
    if run_config["train"].get("baseline"):
        notes.append(
            f"{embedder} is a plain-classifier run: its latents were not trained as a VAE, "
            "so slices and densities are rougher than with a DB-VAE run"
        )
    listener.phase("embed", len(images))
    mu, _ = encode(model, images, device=device, on_advance=listener.advance)
    embedding = mu.numpy()
    options = config.options
    clusters = find_slices(
        embedding, options.slices, min_size=options.min_group_size, seed=options.seed
    )
    by_cluster = slice_table(table, clusters, embedding, options, kind="cluster")
    table["latent_slice"] = clusters
    notes.append(f"Slices from the latents of {embedder}")
    density = runfolder.load_density(embedder)
    if density is None:
        notes.append(
            f"{embedder} has no saved training density (density.pt): no accuracy by density "
            "decile. Runs trained with this version save one"
        )
        return by_cluster
    log_density = density.score_samples(mu, torch.zeros(len(mu), dtype=torch.long)).numpy()
    table["latent_log_density"] = log_density
    by_decile = slice_table(
        table,
        density_deciles(log_density),
        embedding,
        options,
        kind="density decile",
        rank_by_error=False,
    )
    return pd.concat([by_cluster, by_decile], ignore_index=True)


def versions() -> dict[str, str]:
    """Versions of the packages that computed the numbers."""
    import fairlearn
    import sklearn

    return {
        "debias": debias.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fairlearn": fairlearn.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


def _with_examples(
    out: Path, slices: pd.DataFrame, table: pd.DataFrame, images: np.ndarray | None
) -> pd.DataFrame:
    """Write each cluster's example images as one PNG; give examples as paths, not row numbers."""
    slices = slices.copy()
    if not len(slices):
        return slices
    if images is not None:
        (out / "slices").mkdir(exist_ok=True)
    grids = []
    for _, row in slices.iterrows():
        grid = None
        if images is not None and row["kind"] == "cluster":
            grid = f"slices/cluster-rank{row['rank']:02d}.png"
            rows = row["examples"]
            _write_grid(
                out / grid,
                images[rows],
                table["y_true"].iloc[rows].astype(str).tolist(),
                table["y_pred"].iloc[rows].astype(str).tolist(),
            )
        grids.append(grid)
    slices["example_grid"] = grids
    if "path" in table.columns:
        paths = table["path"].astype(str).tolist()
        slices["examples"] = [[paths[i] for i in rows] for rows in slices["examples"]]
    return slices


def _write(
    out: Path,
    config: AuditConfig,
    result: AuditResult,
    slices: pd.DataFrame,
    table: pd.DataFrame,
    notes: list[str],
    model_facts: dict[str, Any] | None,
) -> None:
    files.write_csv(out / "by_group.csv", result.by_group)
    files.write_csv(out / "disparities.csv", result.disparities)
    flat = slices.copy()
    if len(flat):
        flat["examples"] = [" | ".join(map(str, e)) for e in flat["examples"]]
    files.write_csv(out / "slices.csv", flat)
    files.write_csv(out / PREDICTIONS, table)
    files.write_json(
        out / AUDIT_FILE,
        {
            "debias_version": debias.__version__,
            "created": datetime.now().isoformat(timespec="seconds"),
            "versions": versions(),
            "config": config.to_dict(),
            "model": model_facts,
            "n": result.n,
            "classes": result.classes,
            "pos_label": result.pos_label,
            "summary": result.summary(),
            "notes": notes,
            "by_group": result.by_group.to_dict("records"),
            "disparities": result.disparities.to_dict("records"),
            "slices": slices.to_dict("records"),
        },
    )


TILE = 96  # pixels per example in a slice strip: room for two caption lines under each face
CAPTION = 24


def _write_grid(path: Path, images: np.ndarray, y_true: list[str], y_pred: list[str]) -> None:
    """Write a slice's examples as one labelled PNG strip, atomically.

    Each face is captioned with its true and predicted class; a failure gets a red frame and
    "x" so the strip reads without the table beside it.
    """
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (max(len(images), 1) * TILE, TILE + CAPTION), "white")
    draw = ImageDraw.Draw(strip)
    for i, (image, true, pred) in enumerate(zip(images, y_true, y_pred, strict=True)):
        face = Image.fromarray(image.transpose(1, 2, 0)).resize((TILE, TILE), Image.NEAREST)
        strip.paste(face, (i * TILE, 0))
        wrong = true != pred
        if wrong:
            draw.rectangle([i * TILE, 0, (i + 1) * TILE - 1, TILE - 1], outline="red", width=3)
        colour = "red" if wrong else "black"
        draw.text((i * TILE + 2, TILE + 1), f"true {true}"[:16], fill="black")
        draw.text((i * TILE + 2, TILE + 12), f"{'x' if wrong else 'ok'} {pred}"[:16], fill=colour)
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    files.atomic_write(path, lambda fh: fh.write(buffer.getvalue()))
