"""The ``debias outliers`` job: fit the detector from a run, score a folder in chunks, write files.

The detector is fitted on the run's training faces and calibrated on its validation faces (the
rows of ``samples.csv``) or, with ``calibration``, on faces like the ones to be screened; then
every image under ``--data`` is scored in chunks of
``chunk_size`` images, so a folder of any size streams from disk. Unreadable files are rows with
the reason, flagged, never a crash. Outputs: ``outliers.csv`` (one row per file, ranked) and
``outliers.json`` (threshold, target rate, calibration size, score definitions, model hash and,
with ``eval_labels``, AUROC / AUPR per outlier type).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

import debias
from debias import errors, files, runfolder
from debias.data import decode_images
from debias.data.layouts import image_files, read_csv_table, relative_paths, with_path_column
from debias.device import select_device
from debias.errors import check_option
from debias.fairness.bootstrap import clopper_pearson
from debias.fairness.groups import suitable_groups
from debias.outliers import LatentOutlierDetector, PValueCombine, faces_needed
from debias.predict import is_attribute
from debias.progress import Listener, SilentListener

# Inlier rows of an evaluation CSV carry one of these (or the run's positive class, e.g. face).
INLIER_VALUES = ("inlier", "normal", "in")
MAX_TRAIN_IMAGES = 20_000  # the latent mean and covariance settle long before this
DEFINITIONS = {
    "not_face": "1 - p(positive class) from the classifier head (detection models)",
    "hidden_features": "squared Mahalanobis distance of the encoder's hidden layer to the "
    "training faces' and their mirror images' (Ledoit-Wolf covariance), averaged over the image "
    "and its mirror image",
    "conv_lof": "distance of the last conv block's map (L2-normalised) to its 10th nearest "
    "among the training faces' and their mirror images', over those maps' own (local outlier "
    "factor), averaged over the image and its mirror image",
    "reconstruction_ratio": "log of the reconstruction error over that of the image averaged to "
    "4 x 4 pixels and blown up, averaged over the image and its mirror image",
    "sharpness": "log mean absolute Laplacian of the grey image (two-sided: blur and noise)",
    "blockiness": "log ratio of gradients across 8x8 JPEG block edges to those elsewhere "
    "(two-sided)",
    "density": "minus the histogram log-density of the latent mean under the training faces, plus "
    "one empty bin's cost per bin width outside the training range (rarity, not combined)",
    "combined": "-log of the smallest (or Fisher's -2 sum log) of the components' conformal "
    "p-values against the validation faces (two-sided for reconstruction_ratio, sharpness and "
    "blockiness); hidden_features, conv_lof and reconstruction_ratio are first combined into one "
    "p-value by Fisher's method",
    "p_value": "conformal p-value of the combined score against the validation faces; "
    "is_outlier iff p_value <= contamination",
}


@dataclass
class OutlierConfig:
    """Everything that defines an outlier scan; saved in ``outliers.json``.

    Attributes
    ----------
    model : str
        A debias run folder.
    data : str or None
        Folder of images to score (any depth; no labels needed) ...
    paths : str or None
        ... or a CSV whose ``path`` column lists them (relative to the CSV).
    calibration : str or None
        Folder (any depth) or CSV (``path`` column) of inlier faces drawn like the ones to be
        screened, to calibrate on instead of the run's validation faces. The false-flag rate holds
        for inputs exchangeable with the calibration faces: the validation faces are as skewed as
        the training faces, so a population with more of the rare kinds of faces gets more of
        them flagged (benchmarks/RESULTS.md measures both).
    eval_labels : str or None
        CSV with ``path`` and ``type`` (or ``label``): ``inlier`` (or the run's positive class)
        for inliers, any other value names an outlier type. Turns on AUROC/AUPR per type.
    calibration_groups : str or None
        A column of the ``calibration`` CSV and of the ``paths`` CSV (e.g. ``race``): each group
        is calibrated on its own faces (Mondrian conformal), so each group's false-flag rate is
        at the target; a screened face is judged by its group's threshold.
    calibration_clusters : int
        Without group labels: calibrate per k-means cluster of the latent means (0: off).
    contamination : float
        Target false-flag rate on inliers.
    rare_fraction : float
        Share of validation faces the rarity flag calls rare.
    combine : {"fisher", "min"}
        How component p-values combine.
    chunk_size : int
        Images decoded and scored at a time.
    device : str
    out : str or None
        The CSV to write (default ``reports/outliers-<date-time>.csv``); the JSON goes beside it.
    overwrite : bool
        Replace an existing scan at ``out`` (otherwise refused before any work).
    """

    model: str
    data: str | None = None
    paths: str | None = None
    calibration: str | None = None
    eval_labels: str | None = None
    calibration_groups: str | None = None
    calibration_clusters: int = 0
    contamination: float = 0.05  # flag 1 in 20 inliers: a review queue, not an alarm
    rare_fraction: float = 0.05
    # min: each corruption type tends to show in one component; benchmarks/RESULTS.md compares
    combine: PValueCombine = "min"
    chunk_size: int = 2048
    device: str = "auto"
    out: str | None = None
    overwrite: bool = False
    components: list[str] = field(default_factory=list)  # filled in: what was combined

    def validate(self) -> None:
        """Raise ConfigError on an out-of-range option or missing input."""
        if self.data is None and self.paths is None:
            raise errors.ConfigError(errors.NO_DATA)
        checks = (
            ("contamination", 0 < self.contamination < 1, "use a rate such as 0.05"),
            ("rare_fraction", 0 < self.rare_fraction < 1, "use a rate such as 0.05"),
            ("combine", self.combine in ("fisher", "min"), "use fisher or min"),
            ("chunk_size", self.chunk_size >= 1, "use 1 or more"),
            ("calibration_clusters", 0 <= self.calibration_clusters <= 100, "use 0 (off) to 100"),
            ("out", self.out is None or self.out.lower().endswith(".csv"), "pass e.g. out.csv"),
        )
        for option, ok, fix in checks:
            value = getattr(self, option)
            check_option(ok, option, value, "not allowed", fix.capitalize())


@dataclass
class OutlierReport:
    """What :func:`write_outliers` returns: the scored table, the detector and the evaluation."""

    csv: Path
    table: pd.DataFrame
    detector: LatentOutlierDetector
    evaluation: dict[str, Any] | None
    calibrated_on: str  # what the false-flag rate was calibrated on, in words
    by_group: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # flag rates
    notes: list[str] = field(default_factory=list)


def fit_detector(
    run_dir: str | Path, config: OutlierConfig, listener: Listener | None = None
) -> LatentOutlierDetector:
    """Fit a detector on a run's training faces; calibrate it on its validation faces.

    With ``config.calibration`` the detector is calibrated on those images instead.

    Raises
    ------
    RunError
        When the run has no validation faces, or its training images cannot be read any more.
    DataError
        When a calibration image cannot be read, or there are too few to flag
        ``config.contamination`` of them.
    """
    listener = listener or SilentListener()
    calibration_paths, calibration_groups = _calibration_inputs(config)
    model, run_config = runfolder.load_model(run_dir)
    device = select_device(config.device)
    model = model.to(device)
    classes = run_config["data"]["classes"]
    positive_name = run_config["data"].get("positive_class")
    positive = classes.index(positive_name) if positive_name in classes else None
    samples = runfolder.read_samples(run_dir)
    if positive_name is not None:
        samples = samples[samples["label"] == positive_name]
    train_paths = samples.loc[samples["split"] == "train", "path"].tolist()
    val_paths = samples.loc[samples["split"] == "val", "path"].tolist()
    if config.calibration is None and not val_paths:
        raise errors.RunError(errors.NO_VALIDATION_FACES.format(path=run_dir))
    rng = np.random.default_rng(0)
    if len(train_paths) > MAX_TRAIN_IMAGES:
        keep = np.sort(rng.choice(len(train_paths), MAX_TRAIN_IMAGES, replace=False))
        train_paths = [train_paths[i] for i in keep]
    size = model.cfg.image_size
    listener.phase("decode run", len(train_paths) + (0 if config.calibration else len(val_paths)))
    train_images = _decode_run_images(train_paths, size, run_dir, listener)
    if config.calibration is None:
        val_images = _decode_run_images(val_paths, size, run_dir, listener)
    else:
        val_images = _calibration_images(config, calibration_paths, size, listener)
    listener.phase("calibrate", len(train_images) + len(val_images))
    detector = LatentOutlierDetector(
        model,
        contamination=config.contamination,
        rare_fraction=config.rare_fraction,
        combine=config.combine,
        positive=positive,
        density=runfolder.load_density(run_dir),
        calibration_clusters=config.calibration_clusters,
        device=device,
    )
    return detector.fit(
        train_images,
        calibration=val_images,
        calibration_groups=calibration_groups,
        on_advance=listener.advance,
    )


def _calibration_inputs(config: OutlierConfig) -> tuple[list[str], np.ndarray | None]:
    """Return the calibration images' paths, and their groups with ``calibration_groups``."""
    paths: list[str] = []
    listed = None  # the calibration CSV, read once for its paths and its groups
    if config.calibration is not None:
        source = Path(config.calibration)
        if source.suffix.lower() == ".csv":
            listed = _listed_table(source)
            paths = listed["path"].tolist()
        else:
            paths = _folder(source, "calibration=")
    groups = None
    if config.calibration_groups:
        groups = _group_values(
            listed, config.calibration_groups, config.calibration, "calibration="
        )
    return paths, groups


def _decode_every(
    paths: list[str], size: int, listener: Listener, fail: Callable[[int, str], Exception]
) -> np.ndarray:
    """Decode every image, or raise ``fail(count, "path: reason" of the first unreadable)``."""
    images, failures = decode_images(paths, size, on_advance=listener.advance)
    if failures:
        first = next(iter(failures))
        raise fail(len(failures), f"{paths[first]}: {failures[first]}")
    return images


def _decode_run_images(
    paths: list[str], size: int, run_dir: str | Path, listener: Listener
) -> np.ndarray:
    return _decode_every(
        paths,
        size,
        listener,
        lambda count, first: errors.RunError(
            errors.RUN_IMAGES_GONE.format(path=run_dir, count=count, first=first)
        ),
    )


def _calibration_images(
    config: OutlierConfig, paths: list[str], size: int, listener: Listener
) -> np.ndarray:
    source = config.calibration
    listener.phase("decode calibration", len(paths))
    images = _decode_every(
        paths,
        size,
        listener,
        lambda count, first: errors.DataError(
            errors.CALIBRATION_UNREADABLE.format(path=source, count=count, first=first)
        ),
    )
    needed = faces_needed(config.contamination)
    if len(images) < needed:
        raise errors.DataError(
            errors.TOO_FEW_CALIBRATION.format(
                path=source, n=len(images), rate=config.contamination, needed=needed
            )
        )
    return images


def _group_values(
    listed: pd.DataFrame | None, column: str, source: str | None, option: str
) -> np.ndarray:
    """Each listed image's value of ``column`` (from :func:`_listed_table`), in the listed order."""
    if listed is None or column not in listed.columns:
        what = f"{source}" if source else "the screened images"
        raise errors.ConfigError(
            errors.GROUPS_NEED_CSV.format(column=column, what=what, option=option)
        )
    return listed[column].fillna("").astype(str).str.strip().to_numpy(dtype=object)


def _listed_table(csv: Path) -> pd.DataFrame:
    """Read a CSV of images: its rows, ``path`` resolved relative to the CSV's folder."""
    table = with_path_column(read_csv_table(csv), csv)
    table["path"] = relative_paths(csv, table["path"])
    return table


def _folder(root: Path, option: str) -> list[str]:
    """Every image file under ``root`` (any depth)."""
    if not root.is_dir():
        raise errors.DataError(errors.NO_SUCH_DIR.format(path=root, option=option))
    paths = image_files(root)
    if not paths:
        raise errors.DataError(errors.NO_IMAGE_FILES.format(path=root, option=option))
    return paths


def write_outliers(config: OutlierConfig, *, listener: Listener | None = None) -> OutlierReport:
    """Score every image of ``config.data`` against the run ``config.model`` and write the files.

    Parameters
    ----------
    config : OutlierConfig
    listener : Listener, optional
        Progress hooks.

    Returns
    -------
    OutlierReport
    """
    listener = listener or SilentListener()
    config.validate()
    runfolder.read_config(config.model)  # a run folder, before any work
    csv = Path(
        config.out or Path("reports") / datetime.now().strftime("outliers-%Y%m%d-%H%M%S.csv")
    )
    _check_out(csv, config.overwrite)  # before the work; again under the lock
    # The screened CSV, read once: its paths, its groups for calibration and for flag rates.
    screened = _listed_table(Path(config.paths)) if config.paths is not None else None
    if screened is not None:
        paths = screened["path"].tolist()
    else:  # validate() made sure one of the two is given
        paths = _folder(Path(config.data or ""), "data=")
    screened_groups = None
    if config.calibration_groups:  # before the work: the screened faces need their groups too
        screened_groups = _group_values(screened, config.calibration_groups, config.paths, "paths=")
    detector = fit_detector(config.model, config, listener)
    config = dataclasses.replace(config, components=list(detector.components_))

    table = _score_all(detector, paths, screened_groups, config.chunk_size, listener)
    evaluation, inliers = None, None
    if config.eval_labels is not None:
        kinds, inlier_values = _kinds(table, config.eval_labels), _inlier_values(config.model)
        evaluation = evaluate(table, kinds, detector, inlier_values)
        inliers = kinds.isin(inlier_values)
    by_group = flag_rates(table, screened, inliers)
    summary = _summary(config, detector, table, evaluation)
    summary["by_group"] = by_group
    summary["small_calibration_groups"] = detector.small_groups_
    summary["notes"] = _notes(config, detector)
    csv.parent.mkdir(parents=True, exist_ok=True)
    # The pair lands CSV first, then the JSON that names the CSV's hash: a kill between the two
    # renames leaves a pair the report refuses rather than mixes.
    with files.lock(csv.parent / f".{csv.name}.lock", csv):
        _check_out(csv, config.overwrite)
        summary["csv_sha256"] = files.write_csv(csv, table)
        files.write_json(csv.with_suffix(".json"), summary)
    return OutlierReport(
        csv, table, detector, evaluation, _calibrated_on(config, detector), by_group,
        summary["notes"],
    )  # fmt: skip


def _score_all(
    detector: LatentOutlierDetector,
    paths: list[str],
    groups: np.ndarray | None,
    chunk_size: int,
    listener: Listener,
) -> pd.DataFrame:
    """Score every path in chunks; return the table ranked, unreadable files flagged first."""
    listener.phase("score", len(paths))
    size = detector.model.cfg.image_size
    parts = []
    for start in range(0, len(paths), chunk_size):
        chunk = paths[start : start + chunk_size]
        images, failures = decode_images(chunk, size)
        ok = np.setdiff1d(np.arange(len(chunk)), np.fromiter(failures, dtype=np.int64))
        if len(ok):  # a chunk of unreadable files only has nothing to score
            part = detector.score_table(images[ok], None if groups is None else groups[start + ok])
            part.insert(0, "path", [chunk[i] for i in ok])
            part["reason"] = ""
            parts.append(part)
        bad = pd.DataFrame(
            {"path": [chunk[i] for i in failures], "reason": list(failures.values())}
        )
        bad["is_outlier"] = True  # an input that cannot be read is not a face the model knows
        bad["is_rare"] = False
        parts.append(bad)
        listener.advance(len(chunk))
    # When nothing could be read the table still has every column: flagged rows, no scores.
    columns = ["path", *detector.table_columns, "reason"]
    table = pd.concat(parts, ignore_index=True).reindex(columns=columns)
    table = table.sort_values("combined", ascending=False, na_position="first")
    table.insert(1, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def _notes(config: OutlierConfig, detector: LatentOutlierDetector) -> list[str]:
    """Return what the reader of a scan should know about how its faces were judged."""
    notes = []
    if detector.small_groups_:
        groups = ", ".join(f"{config.calibration_groups}={g} ({n})" for g, n in
                           detector.small_groups_.items())  # fmt: skip
        notes.append(
            errors.SMALL_CALIBRATION_GROUPS.format(
                groups=groups,
                rate=detector.contamination,
                needed=faces_needed(detector.contamination),
            )
        )
    if detector.group_calibration_:
        sizes = ", ".join(f"{g} {c.n}" for g, c in detector.group_calibration_.items())
        kind = config.calibration_groups or "latent cluster"
        notes.append(f"Calibrated per {kind}, each on its own faces: {sizes}")
    return notes


def _check_out(csv: Path, overwrite: bool) -> None:
    """Refuse to replace an existing scan (its CSV or JSON) unless asked to."""
    for path in (csv, csv.with_suffix(".json")):
        if path.is_dir():
            raise errors.RunError(errors.NOT_A_FILE.format(path=path))
        if path.exists() and not overwrite:
            raise errors.RunError(errors.OUT_EXISTS.format(path=path, what="a debias outlier scan"))


def _calibrated_on(config: OutlierConfig, detector: LatentOutlierDetector) -> str:
    source = config.calibration or "the run's validation faces"
    return f"{detector.n_calibration_} faces ({source})"


# Written into outliers.json beside the evaluation it describes.
EVALUATION_CONVENTION = (
    "Outliers are the positive class and the combined score ranks them (higher = more "
    "anomalous). flagged_at_threshold is the share flagged at the calibrated threshold (for "
    "inliers: the realised false-flag rate); missed_at_95_kept is the share of outliers that "
    "pass when the threshold keeps 95% of the inliers (FPR95 with inliers as positives). "
    "Unreadable files count as flagged and are left out of the AUROC."
)


def evaluate(
    table: pd.DataFrame,
    kind: pd.Series,
    detector: LatentOutlierDetector,
    inlier_values: list[str],
) -> dict[str, Any]:
    """AUROC, AUPR and rates per outlier type, given each scored row's type.

    ``kind`` comes from :func:`_kinds` (the evaluation CSV's ``type``/``label`` per row, NaN when
    not listed). The result's ``convention`` says how to read it (:data:`EVALUATION_CONVENTION`).
    """
    inlier = kind.isin(inlier_values)
    scored = table["combined"].notna() & kind.notna()
    result: dict[str, Any] = {
        "convention": EVALUATION_CONVENTION,
        "n_inliers": int((inlier & scored).sum()),
        "unlabelled": int(kind.isna().sum()),
        "false_flag_rate": float(table.loc[inlier, "is_outlier"].mean()),
        "target_false_flag_rate": detector.contamination,
        "types": {},
    }
    inlier_scores = table.loc[inlier & scored, "combined"].to_numpy()
    keep95 = np.quantile(inlier_scores, 0.95) if len(inlier_scores) else np.nan
    for name in sorted(set(kind.dropna()) - set(kind[inlier])):
        rows = (kind == name) & scored
        scores = table.loc[rows, "combined"].to_numpy()
        y = np.r_[np.zeros(len(inlier_scores)), np.ones(len(scores))]
        s = np.r_[inlier_scores, scores]
        both = len(scores) > 0 and len(inlier_scores) > 0
        result["types"][name] = {
            "n": int((kind == name).sum()),
            "auroc": float(roc_auc_score(y, s)) if both else None,
            "aupr": float(average_precision_score(y, s)) if both else None,
            "flagged_at_threshold": float(table.loc[kind == name, "is_outlier"].mean()),
            "missed_at_95_kept": float((scores <= keep95).mean()) if both else None,
        }
    return result


def _inlier_values(run_dir: str | Path) -> list[str]:
    """Evaluation-label values that mean "inlier": ours, and the run's positive class."""
    positive = runfolder.read_config(run_dir)["data"].get("positive_class")
    return [*INLIER_VALUES, *([positive] if positive else [])]


def _kinds(table: pd.DataFrame, eval_labels: str | Path) -> pd.Series:
    """Each scored row's type from a CSV of ``path`` and ``type``/``label`` (NaN: not listed)."""
    csv = Path(eval_labels)
    labels = _listed_table(csv)
    column = "type" if "type" in labels.columns else "label" if "label" in labels.columns else None
    if column is None:
        raise errors.DataError(
            errors.MISSING_COLUMN.format(
                path=csv,
                column="type",
                columns=", ".join(labels.columns),
                fix="Give the type (inlier, or the outlier type) of each image in a 'type' column.",
            )
        )
    return table["path"].map(dict(zip(labels["path"], labels[column], strict=True)))


FLAG_CI = 0.95  # level of the flag-rate intervals (Clopper-Pearson: exact for a binomial)


def flag_rates(
    table: pd.DataFrame, listed: pd.DataFrame | None, inliers: pd.Series | None
) -> dict[str, list[dict[str, Any]]]:
    """Flag rate per group of each attribute column of the screened CSV, with exact intervals.

    ``listed`` is the screened CSV (:func:`_listed_table`). Among the inliers when evaluation
    labels say which rows are inliers (the false-flag rate), else among every screened row. Empty
    without a screened CSV with attribute columns.
    """
    if listed is None:
        return {}
    candidates = [c for c in listed.columns if is_attribute(c) and c not in ("type", "label")]
    columns = suitable_groups(listed.fillna("").astype(str), candidates)
    if not columns:
        return {}
    values = listed.drop_duplicates("path").set_index("path")[columns].fillna("").astype(str)
    rows = table if inliers is None else table[inliers.to_numpy()]
    out: dict[str, list[dict[str, Any]]] = {}
    for column in columns:
        group = rows["path"].map(values[column]).fillna("")
        out[column] = []
        for name in sorted(set(group) - {""}):
            flagged = rows.loc[group == name, "is_outlier"].astype(bool)
            k, n = int(flagged.sum()), len(flagged)
            low, high = clopper_pearson(k, n, FLAG_CI)
            out[column].append(
                {"group": name, "n": n, "flagged": k, "rate": k / n, "ci_low": low, "ci_high": high}
            )
    return out


def model_hash(run_dir: str | Path) -> str:
    """SHA-256 of the run's checkpoint: which weights produced the scores."""
    return files.sha256(Path(run_dir) / runfolder.CHECKPOINT)


def _summary(
    config: OutlierConfig,
    detector: LatentOutlierDetector,
    table: pd.DataFrame,
    evaluation: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "debias_version": debias.__version__,
        "created": datetime.now().isoformat(timespec="seconds"),
        "config": dataclasses.asdict(config),
        "model_sha256": model_hash(config.model),
        "threshold": detector.threshold_,
        "target_false_flag_rate": detector.contamination,
        "calibration_size": detector.n_calibration_,
        "calibrated_on": _calibrated_on(config, detector),
        "calibration_false_flag_rate": float(detector.labels_.mean()),
        "components": detector.components_,
        "definitions": DEFINITIONS,
        "n": len(table),
        "n_outliers": int(table["is_outlier"].sum()),
        "n_rare": int(table["is_rare"].sum()),
        "n_unreadable": int((table["reason"] != "").sum()),
        "evaluation": evaluation,
    }
