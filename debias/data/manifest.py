"""Find a folder's layout, read it into a manifest, and decode its images once.

``load_data`` is the boundary where user data is validated: everything after it trusts the
``FaceData`` it returns (readable images, at least two classes, known group columns).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

import debias.data.layouts as layouts
from debias import errors
from debias.data.decode import DEFAULT_CACHE_BYTES, IMAGE_EXTENSIONS, decode_images
from debias.fairness.groups import RESERVED, check_groups, suitable_groups

Layout = Literal["labels-csv", "class-folders", "utkface", "celeba"]


@dataclass
class Manifest:
    """The images of a data set, before decoding.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per image: ``path`` (absolute), ``label`` (class name), attribute columns, and
        optionally ``split`` (train/val/test, from the data set's own partition).
    layout : str
        Which layout was read.
    source : str
        The folder or CSV it was read from.
    skipped : list of (str, str)
        Files that cannot be used, with the reason.
    """

    frame: pd.DataFrame
    layout: Layout
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def attribute_columns(self) -> list[str]:
        """Columns other than path, label and split."""
        return [c for c in self.frame.columns if c not in RESERVED]


@dataclass
class FaceData:
    """Decoded images with labels and group attributes; the output of :func:`load_data`.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per usable image (see :class:`Manifest`), index 0..N-1.
    images : numpy.ndarray
        uint8 array ``(N, 3, S, S)``, in RAM or memory-mapped.
    classes : list of str
        Sorted class names; ``y`` indexes into it.
    y : numpy.ndarray
        int64 class index per image.
    group_columns : list of str
        Attribute columns used as groups for evaluation (never for training the DB-VAE).
    skipped : list of (str, str)
        Unusable files and why.
    layout, source : str
        Where the data came from.
    """

    frame: pd.DataFrame
    images: np.ndarray
    classes: list[str]
    y: np.ndarray
    group_columns: list[str]
    skipped: list[tuple[str, str]]
    layout: str
    source: str

    def __len__(self) -> int:
        return len(self.frame)


def read_manifest(
    data: str | os.PathLike[str] | None = None,
    *,
    labels: str | os.PathLike[str] | None = None,
    target: str | None = None,
) -> Manifest:
    """Detect the layout of ``data`` (or read the CSV ``labels``) and list its images.

    Parameters
    ----------
    data : path-like, optional
        A folder in one of the accepted layouts.
    labels : path-like, optional
        A labels CSV; its paths are relative to its own folder. Takes precedence over ``data``.
    target : str, optional
        The label: a CSV column, a UTKFace field (gender, race, age-bucket) or a CelebA attribute.

    Returns
    -------
    Manifest

    Raises
    ------
    DataError
        When the path does not exist or no layout fits, with the accepted layouts.
    """
    if labels is not None:
        csv_path = Path(labels)
        frame, skipped = layouts.read_labels_csv(csv_path, target)
        return Manifest(frame, "labels-csv", str(csv_path), skipped)
    if data is None:
        raise errors.ConfigError(errors.NO_DATA)
    root = Path(data)
    if not root.exists():
        raise errors.DataError(errors.NO_SUCH_DIR.format(path=root, option="data="))
    if not root.is_dir():
        raise errors.DataError(errors.NOT_A_DIR.format(path=root))
    if (root / "labels.csv").is_file():
        frame, skipped = layouts.read_labels_csv(root / "labels.csv", target)
        return Manifest(frame, "labels-csv", str(root / "labels.csv"), skipped)
    celeba = layouts.find_celeba(root)
    if celeba is not None:
        frame, skipped = layouts.read_celeba(celeba, target)
        return Manifest(frame, "celeba", str(root), skipped)
    if layouts.looks_like_utkface(root, target):
        frame, skipped = layouts.read_utkface(root, target)
        return Manifest(frame, "utkface", str(root), skipped)
    if layouts.class_folders(root):
        if target is not None:
            raise errors.DataError(
                errors.BAD_TARGET.format(
                    path=root, target=target, choices="none: class folders are the labels"
                )
            )
        frame, skipped = layouts.read_class_folders(root)
        return Manifest(frame, "class-folders", str(root), skipped)
    raise errors.DataError(errors.UNKNOWN_LAYOUT.format(path=root))


def default_groups(manifest: Manifest) -> list[str]:
    """Attribute columns that make sensible evaluation groups (2..20 distinct values)."""
    if manifest.layout == "celeba":
        return [c for c in layouts.CELEBA_DEFAULT_GROUPS if c in manifest.frame.columns]
    return suitable_groups(manifest.frame, manifest.attribute_columns)


def load_data(
    data: str | os.PathLike[str] | None = None,
    *,
    labels: str | os.PathLike[str] | None = None,
    target: str | None = None,
    groups: Sequence[str] | None = None,
    image_size: int = 64,
    strict: bool = False,
    splits: Sequence[str] | None = None,
    cache_file: str | os.PathLike[str] | None = None,
    max_memory_bytes: int = DEFAULT_CACHE_BYTES,
    num_workers: int = 0,
    min_classes: int = 2,
    on_start: Callable[[int], None] | None = None,
    on_advance: Callable[[int], None] | None = None,
) -> FaceData:
    """Read a data set, decode every image once, and validate it.

    Parameters
    ----------
    data, labels, target
        See :func:`read_manifest`.
    groups : sequence of str, optional
        Attribute columns to evaluate by; default: every attribute with 2-20 values.
    image_size, strict : int, bool
        Side of the square images in pixels; raise on the first unusable file, not skip it.
    splits : sequence of str, optional
        Keep only rows whose ``split`` is one of these (when the data set has a partition).
    cache_file, max_memory_bytes : path-like, int
        Decoded images larger than ``max_memory_bytes`` are memory-mapped at ``cache_file``.
    num_workers, min_classes : int
        Decoding processes; fewest classes accepted (2 to train, 1 to audit a single class).
    on_start, on_advance : callable, optional
        Progress hooks: total count, then increments.

    Returns
    -------
    FaceData

    Raises
    ------
    DataError
        No images, fewer than two classes, unknown groups, or (with ``strict``) an unusable file.
    """
    manifest = read_manifest(data, labels=labels, target=target)
    frame = _rows_of(manifest.frame, splits)
    if on_start is not None:
        on_start(len(frame))
    images, failures = decode_images(
        frame["path"].tolist(),
        image_size,
        cache_file=cache_file,
        max_memory_bytes=max_memory_bytes,
        num_workers=num_workers,
        on_advance=on_advance,
    )
    frame, images, skipped = _drop_failures(frame, images, failures, list(manifest.skipped))
    _check_decoded(manifest, frame, skipped, strict)
    return _face_data(manifest, frame, images, skipped, groups, min_classes)


def _rows_of(frame: pd.DataFrame, splits: Sequence[str] | None) -> pd.DataFrame:
    """Keep the rows whose ``split`` is in ``splits`` (all when None or unsplit); renumber."""
    if splits is not None and "split" in frame.columns:
        frame = frame[frame["split"].isin(list(splits))]
    return frame.reset_index(drop=True)


def _face_data(
    manifest: Manifest,
    frame: pd.DataFrame,
    images: np.ndarray,
    skipped: list,
    groups: Sequence[str] | None,
    min_classes: int,
) -> FaceData:
    """Return the decoded rows as :class:`FaceData`: classes numbered in order, groups checked."""
    classes = sorted(frame["label"].unique().tolist())
    if len(classes) < min_classes:
        raise errors.DataError(errors.ONE_CLASS.format(path=manifest.source, name=classes[0]))
    if groups is None:
        group_columns = default_groups(Manifest(frame, manifest.layout, manifest.source))
    else:
        group_columns = check_groups(frame, groups)
    y = frame["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64, copy=True)
    return FaceData(
        frame, images, classes, y, group_columns, skipped, manifest.layout, manifest.source
    )


def _drop_failures(
    frame: pd.DataFrame, images: np.ndarray, failures: dict[int, str], skipped: list
) -> tuple[pd.DataFrame, np.ndarray, list]:
    """Leave the rows that did not decode out, adding them to the skipped files."""
    if not failures:
        return frame, images, skipped
    skipped = skipped + [(frame["path"][i], reason) for i, reason in failures.items()]
    keep = np.setdiff1d(np.arange(len(frame)), np.fromiter(failures, dtype=np.int64))
    return frame.iloc[keep].reset_index(drop=True), _compact(images, keep), skipped


def _check_decoded(manifest: Manifest, frame: pd.DataFrame, skipped: list, strict: bool) -> None:
    """Refuse skipped files under ``strict`` (counted after decoding every one), and no images."""
    if strict and skipped:
        raise errors.DataError(
            errors.UNREADABLE_STRICT.format(
                path=skipped[0][0], reason=skipped[0][1], count=len(skipped)
            )
        )
    if len(frame) == 0:
        raise errors.DataError(
            errors.NO_IMAGES.format(
                path=manifest.source, skipped=len(skipped), exts=", ".join(IMAGE_EXTENSIONS)
            )
        )


def _compact(images: np.ndarray, keep: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Move rows ``keep`` (sorted) to the front in place: a memory-mapped cache is never copied."""
    for start in range(0, len(keep), chunk):
        # keep[j] >= j, so each chunk reads only rows that no earlier chunk has overwritten.
        rows = keep[start : start + chunk]
        images[start : start + len(rows)] = images[rows]
    return images[: len(keep)]
