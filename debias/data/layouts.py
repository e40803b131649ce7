"""Readers for the four data layouts; each returns a table of (path, label, attributes...).

A reader only reads names and label files. Images are opened later, once, by ``decode``; files a
reader can already tell are unusable (a malformed UTKFace name, a non-image file in a class folder)
are returned as skipped with the reason.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from debias import errors
from debias.data.decode import IMAGE_EXTENSIONS, is_image_name

Skipped = list[tuple[str, str]]
# Cells that spreadsheets and pandas write for a missing value: an empty label, not a class.
MISSING = ("", "nan", "NaN", "NA", "N/A", "null", "None")

UTK_TARGETS = ("gender", "race", "age-bucket")
UTK_GENDERS = ("male", "female")  # UTKFace: 0 = male, 1 = female
UTK_RACES = ("White", "Black", "Asian", "Indian", "Others")
UTK_NAME = re.compile(r"^(\d{1,3})_([01])_([0-4])_\d+")
UTK_LIKE = re.compile(r"^\d+_\d+_")
UTK_PARTS = re.compile(r"^(crop_)?part\d+$")  # the in-the-wild set's folders
AGE_BUCKETS = (
    (0, 17, "0-17"),
    (18, 29, "18-29"),
    (30, 44, "30-44"),
    (45, 59, "45-59"),
    (60, 200, "60+"),
)

# Where CelebA's three parts sit, in the layouts it ships in: flat (torchvision's download), the
# official download (Anno/, Eval/, Img/) and Kaggle's (CSV files, images one folder deeper).
CELEBA_ATTRS = ("list_attr_celeba.txt", "Anno/list_attr_celeba.txt", "list_attr_celeba.csv")
CELEBA_IMAGES = ("img_align_celeba", "Img/img_align_celeba")
CELEBA_PARTITION = (
    "list_eval_partition.txt",
    "Eval/list_eval_partition.txt",
    "list_eval_partition.csv",
)
CELEBA_SPLITS = {"0": "train", "1": "val", "2": "test"}
CELEBA_DEFAULT_GROUPS = ("Male", "Young", "Pale_Skin")
# Folder names of a partition split into class folders (faces/train/<class>/...), by split.
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
# The image column of a CSV: ours, then the names other data sets give it (FairFace's "file").
PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "image_path", "img_path")


def _visible_files(root: Path) -> list[Path]:
    """Every non-hidden file under ``root``, in a stable order, skipping hidden folders."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        if path.is_file() or path.is_symlink() or (path.is_dir() and is_image_name(path.name)):
            out.append(path)
    return out


def image_files(root: Path) -> list[str]:
    """Every image file under ``root`` (any depth, no labels needed), as absolute paths.

    Files and folders with an image extension are listed even when they will not decode, so the
    caller can report them; files of other types (a README, a CSV) are left out.
    """
    return [str(p.resolve()) for p in _visible_files(root) if is_image_name(p.name)]


def class_folders(root: Path) -> list[Path]:
    """Non-hidden sub-folders of ``root`` that hold at least one image file (at any depth)."""
    return [
        d
        for d in sorted(root.iterdir())
        if d.is_dir()
        and not d.name.startswith(".")
        and not is_image_name(d.name)
        and any(is_image_name(f.name) for f in d.rglob("*") if not f.name.startswith("."))
    ]


def split_folders(root: Path) -> list[tuple[str, Path]]:
    """``root``'s partition folders with their splits, when it is split that way, else [].

    Every sub-folder holding images must be named for a split (train/, val/, test/ ...) and hold
    class folders itself, and one must be a train folder: ``faces/train/<class>/``.
    """
    folders = class_folders(root)
    if not folders or any(d.name.lower() not in SPLIT_FOLDERS for d in folders):
        return []
    named = [(SPLIT_FOLDERS[d.name.lower()], d) for d in folders]
    if "train" not in {split for split, _ in named} or not all(class_folders(d) for d in folders):
        return []
    return named


def read_class_folders(root: Path) -> tuple[pd.DataFrame, Skipped]:
    """Read torchvision's ImageFolder layout: ``root/<class>/**/<image>``.

    A root split into partitions first (``root/train/<class>/``, ``root/val/<class>/``) is read
    part by part, with a ``split`` column; the data set's own partition is then used.
    """
    parts = split_folders(root)
    if parts:
        frames, skipped = [], []
        for split, folder in parts:
            frame, bad = read_class_folders(folder)
            frames.append(frame.assign(split=split))
            skipped += bad
        return pd.concat(frames, ignore_index=True), skipped
    rows, skipped = [], []
    for folder in class_folders(root):
        for f in _visible_files(folder):
            if is_image_name(f.name):
                rows.append((str(f), folder.name))
            else:
                skipped.append(
                    (str(f), f"not an image file extension ({', '.join(IMAGE_EXTENSIONS)})")
                )
    return pd.DataFrame(rows, columns=["path", "label"]), skipped


def read_csv_table(csv_path: Path) -> pd.DataFrame:
    """Read a CSV as text cells ('' when empty), with its separator (, ; tab) detected.

    Every CSV the tool reads (labels, predictions, images to screen, evaluation labels) comes
    through here, so they share one missing-file error and one parse error.
    """
    if csv_path.is_dir():
        raise errors.DataError(errors.NOT_A_FILE.format(path=csv_path))
    if not csv_path.is_file():
        raise errors.DataError(errors.NO_SUCH_FILE.format(path=csv_path))
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            head = fh.read(64 * 1024)
        try:
            sep = csv.Sniffer().sniff(head.splitlines()[0] if head else "", ",;\t").delimiter
        except csv.Error:
            sep = ","  # one column, or nothing to tell from: the default
        frame = pd.read_csv(
            csv_path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8-sig"
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, csv.Error) as exc:
        raise errors.DataError(errors.BAD_CSV.format(path=csv_path, reason=exc)) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def check_filled(frame: pd.DataFrame, column: str, csv_path: Path) -> None:
    """Raise DataError naming the first row whose ``column`` is empty or spells a missing value."""
    empty = frame.index[frame[column].str.strip().isin(MISSING)]
    if len(empty):
        raise errors.DataError(
            errors.EMPTY_LABEL.format(
                path=csv_path, count=len(empty), column=column, row=int(empty[0]) + 2
            )
        )


def relative_paths(csv_path: Path, values: pd.Series) -> list[str]:
    """Absolute paths of a CSV's ``path`` cells, read relative to the CSV's folder ('' stays '')."""
    return [str((csv_path.parent / v.strip()).resolve()) if v.strip() else "" for v in values]


def with_path_column(frame: pd.DataFrame, csv_path: Path) -> pd.DataFrame:
    """Return ``frame`` with its image column named ``path``: ours, or a name other tools use.

    Raises
    ------
    DataError
        When the CSV has none of the names in PATH_COLUMNS.
    """
    found = next((c for c in PATH_COLUMNS if c in frame.columns), None)
    if found is None:
        raise errors.DataError(
            errors.MISSING_COLUMN.format(
                path=csv_path,
                column="path",
                columns=", ".join(frame.columns),
                fix="Add a 'path' column with image paths relative to the CSV's folder.",
            )
        )
    return frame.rename(columns={found: "path"})


def read_labels_csv(csv_path: Path, target: str | None) -> tuple[pd.DataFrame, Skipped]:
    """Read a labels CSV: ``path`` (relative to the CSV's folder), a label, attributes."""
    frame = with_path_column(read_csv_table(csv_path), csv_path)
    columns = ", ".join(frame.columns)
    target = target or "label"
    if target not in frame.columns:
        raise errors.DataError(
            errors.MISSING_COLUMN.format(
                path=csv_path,
                column=target,
                columns=columns,
                fix="Pass target=COLUMN to choose the label column, or add a 'label' column.",
            )
        )
    for column in ("path", target):
        check_filled(frame, column, csv_path)
    root = csv_path.parent.resolve()
    paths = relative_paths(csv_path, frame["path"])
    for i, (value, full) in enumerate(zip(frame["path"], paths, strict=True)):
        if not Path(full).is_relative_to(root):
            raise errors.DataError(
                errors.PATH_ESCAPES.format(path=csv_path, row=i + 2, value=value, root=root)
            )
    repeated = pd.Series(paths).duplicated()
    if repeated.any():
        row = int(repeated.idxmax())
        first = paths.index(paths[row])
        raise errors.DataError(
            errors.DUPLICATE_ROW.format(
                path=csv_path, row=row + 2, value=frame["path"][row], first=first + 2
            )
        )
    attrs = frame.drop(columns=["path", target])
    if "label" in attrs.columns:  # the original label column is kept as an attribute
        attrs = attrs.rename(columns={"label": "label_column"})
    out = pd.concat(
        [pd.DataFrame({"path": paths, "label": frame[target].str.strip()}), attrs], axis=1
    )
    return out, []


def _age_bucket(age: int) -> str:
    return next(name for low, high, name in AGE_BUCKETS if low <= age <= high)


def looks_like_utkface(root: Path, target: str | None = None) -> bool:
    """Whether ``root`` holds UTKFace-named images rather than class folders.

    Most image files directly under ``root`` must have UTKFace-style names; with none there,
    nearly all in its sub-folders must, and either the folders are UTKFace's own parts
    (``part1/``, ``crop_part1/``, as the in-the-wild set ships) or ``target`` is a label only the
    names carry (``gender``, ``race``, ``age-bucket``). Other sub-folders are classes.
    """
    names = [p.name for p in root.iterdir() if is_image_name(p.name)]
    if names:
        return sum(bool(UTK_LIKE.match(n)) for n in names) >= 0.5 * len(names)
    folders = class_folders(root)
    if not folders or not (all(UTK_PARTS.match(d.name) for d in folders) or target in UTK_TARGETS):
        return False
    nested = [f.name for d in folders for f in _visible_files(d) if is_image_name(f.name)]
    return sum(bool(UTK_LIKE.match(n)) for n in nested) >= 0.9 * len(nested)


def read_utkface(root: Path, target: str | None) -> tuple[pd.DataFrame, Skipped]:
    """Read UTKFace file names ``age_gender_race_timestamp.jpg...`` under ``root``."""
    target = target or "gender"
    if target not in UTK_TARGETS:
        raise errors.DataError(
            errors.BAD_TARGET.format(path=root, target=target, choices=", ".join(UTK_TARGETS))
        )
    rows, skipped = [], []
    for f in _visible_files(root):
        if not is_image_name(f.name):
            continue
        m = UTK_NAME.match(f.name)
        if not m:
            skipped.append((str(f), "malformed UTKFace name (expected age_gender_race_date.jpg)"))
            continue
        age, gender, race = int(m[1]), UTK_GENDERS[int(m[2])], UTK_RACES[int(m[3])]
        rows.append((str(f), age, _age_bucket(age), gender, race))
    frame = pd.DataFrame(rows, columns=["path", "age", "age_bucket", "gender", "race"])
    frame.insert(1, "label", frame[target.replace("-", "_")])
    return frame, skipped


class CelebaFiles(NamedTuple):
    """The parts of a CelebA folder: attribute file, image folder and (optional) partition file."""

    attributes: Path
    images: Path
    partition: Path | None


def find_celeba(root: Path) -> CelebaFiles | None:
    """CelebA's files under ``root`` in any of the layouts it ships in, or None if it is not one."""
    attributes = next((root / p for p in CELEBA_ATTRS if (root / p).is_file()), None)
    images = next((root / p for p in CELEBA_IMAGES if (root / p).is_dir()), None)
    if attributes is None or images is None:
        return None
    if (images / images.name).is_dir():  # Kaggle's img_align_celeba/img_align_celeba/
        images = images / images.name
    partition = next((root / p for p in CELEBA_PARTITION if (root / p).is_file()), None)
    return CelebaFiles(attributes, images, partition)


def _celeba_table(path: Path, what: str) -> pd.DataFrame:
    """Read a CelebA list as strings, first column ``file``: Kaggle's CSV or the original text.

    The text files are whitespace-separated; the attribute file starts with the image count and
    a line of attribute names (one fewer than the columns below it).
    """
    try:
        if path.suffix == ".csv":
            table = pd.read_csv(path, dtype=str, encoding="utf-8")
            return table.rename(columns={table.columns[0]: "file"})
        with open(path, encoding="utf-8") as fh:
            if what == "partition":
                return pd.read_csv(fh, sep=r"\s+", header=None, dtype=str)
            fh.readline()  # the image count
            names = fh.readline().split()
            table = pd.read_csv(fh, sep=r"\s+", header=None, dtype=str)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise errors.DataError(errors.BAD_CELEBA.format(path=path, what=what, reason=exc)) from None
    if not names or table.shape[1] != len(names) + 1:
        raise errors.DataError(
            errors.BAD_CELEBA.format(
                path=path,
                what=what,
                reason=f"{len(names)} attribute names but {table.shape[1] - 1} values a row",
            )
        )
    table.columns = ["file", *names]
    return table


def read_celeba(files: CelebaFiles, target: str | None) -> tuple[pd.DataFrame, Skipped]:
    """Read CelebA: the attribute file, the aligned images and, if there, the partition file."""
    table = _celeba_table(files.attributes, "attribute")
    names = [c for c in table.columns if c != "file"]
    if target is None or target not in names:
        raise errors.DataError(
            errors.BAD_TARGET.format(path=files.attributes, target=target, choices=", ".join(names))
        )
    frame = pd.DataFrame({"path": [str(files.images / f) for f in table["file"]]})
    frame["label"] = table[target].map({"1": "yes", "-1": "no"}).fillna("")
    for name in names:
        if name != target:
            frame[name] = table[name].map({"1": "yes", "-1": "no"}).fillna("")
    if files.partition is not None:
        split = _celeba_table(files.partition, "partition")
        if split.shape[1] != 2:
            raise errors.DataError(
                errors.BAD_CELEBA.format(
                    path=files.partition,
                    what="partition",
                    reason=f"{split.shape[1]} columns, expected 2 (file, partition)",
                )
            )
        split_of = dict(zip(split.iloc[:, 0], split.iloc[:, 1], strict=True))
        frame["split"] = table["file"].map(split_of).map(CELEBA_SPLITS).fillna("train")
    return frame, []
