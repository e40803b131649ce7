"""Data layouts, image decoding, and the errors a user sees for bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import add_bad_files, draw
from PIL import Image

from debias.data import load_data, load_image, read_manifest, write_synthetic
from debias.data.decode import UnreadableImage, decode_images
from debias.errors import DataError


def test_class_folders(class_folders: Path) -> None:
    data = load_data(class_folders, image_size=16)
    assert data.layout == "class-folders"
    assert data.classes == ["face", "not_face"]
    assert data.images.shape == (40, 3, 16, 16) and data.images.dtype == np.uint8
    assert np.bincount(data.y).tolist() == [20, 20]
    assert data.skipped == []


def test_class_folders_split_into_partitions(split_class_folders: Path) -> None:
    data = load_data(split_class_folders, image_size=16)
    assert data.layout == "class-folders" and data.classes == ["face", "not_face"]
    assert data.frame["split"].value_counts().to_dict() == {"train": 32, "test": 8}
    assert all(f"/{s}/" in p for s, p in zip(data.frame["split"], data.frame["path"], strict=True))
    (split_class_folders / "Validation" / "face").mkdir(parents=True)
    draw(0, np.random.default_rng(3)).save(split_class_folders / "Validation" / "face" / "v.png")
    assert (load_data(split_class_folders, image_size=16).frame["split"] == "val").sum() == 1


def test_class_folders_report_unreadable_files(class_folders: Path) -> None:
    bad = add_bad_files(class_folders / "face")
    data = load_data(class_folders, image_size=16)
    assert len(data) == 40
    assert sorted(Path(p).name for p, _ in data.skipped) == sorted(bad)
    reasons = {Path(p).name: r for p, r in data.skipped}
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "truncated" in reasons["truncated.jpg"].lower()


def test_strict_makes_unreadable_files_an_error(class_folders: Path) -> None:
    add_bad_files(class_folders / "face")
    with pytest.raises(DataError, match=r"drop strict=True"):
        load_data(class_folders, image_size=16, strict=True)


def test_hidden_files_and_nested_folders(class_folders: Path, rng: np.random.Generator) -> None:
    (class_folders / "face" / ".DS_Store").write_bytes(b"\0\0")
    (class_folders / "face" / "nested" / "deeper").mkdir(parents=True)
    draw(0, rng).save(class_folders / "face" / "nested" / "deeper" / "x.png")
    data = load_data(class_folders, image_size=16)
    assert len(data) == 41 and data.skipped == []


def test_labels_csv_carries_attributes_as_groups(labels_dir: Path) -> None:
    data = load_data(labels_dir, image_size=16)
    assert data.layout == "labels-csv"
    assert data.classes == ["a", "b"]
    assert data.group_columns == ["skin"]  # age has too many values to be a group
    assert set(data.frame.columns) >= {"path", "label", "skin", "age"}
    assert (data.frame["skin"] == "dark").sum() == 6


def test_labels_csv_anywhere_with_target(labels_dir: Path, tmp_path: Path) -> None:
    csv = labels_dir / "split.csv"
    frame = pd.read_csv(labels_dir / "labels.csv")
    frame.to_csv(csv, index=False)
    data = load_data(labels=csv, target="skin", image_size=16)
    assert data.classes == ["dark", "light"]
    assert "label_column" in data.frame.columns  # the old label is kept as an attribute


def test_labels_csv_with_fairface_column_names(labels_dir: Path) -> None:
    # FairFace's fairface_label_train.csv: file,age,gender,race,service_test
    frame = pd.read_csv(labels_dir / "labels.csv").rename(columns={"path": "file"})
    frame.to_csv(labels_dir / "fairface_label_train.csv", index=False)
    data = load_data(labels=labels_dir / "fairface_label_train.csv", target="skin", image_size=16)
    assert data.classes == ["dark", "light"] and len(data) == 48
    assert all(Path(p).is_file() for p in data.frame["path"])


def test_labels_csv_semicolons_bom_crlf(labels_dir: Path) -> None:
    text = (labels_dir / "labels.csv").read_text().replace(",", ";").replace("\n", "\r\n")
    (labels_dir / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    data = load_data(labels_dir, image_size=16)
    assert len(data) == 48 and data.classes == ["a", "b"]


def test_labels_csv_path_escaping_the_folder(labels_dir: Path) -> None:
    (labels_dir / "labels.csv").write_text("path,label\n../../etc/passwd,a\nimg/1.png,b\n")
    with pytest.raises(DataError, match=r"points outside"):
        load_data(labels_dir)


@pytest.mark.parametrize(
    "text, match",
    [
        ("picture,label\nimg/1.png,a\n", r"column 'path' not found .* Add a 'path' column"),
        ("path,cls\nimg/1.png,a\n", r"column 'label' not found .*target="),
        ("path,label\nimg/1.png,\nimg/2.png,b\n", r"empty 'label'"),
        (
            "path,label\nimg/1.png,NaN\nimg/2.png,b\n",
            r"1 row\(s\) have an empty 'label' \(first: row 2\)",
        ),
        (
            "path,label\nimg/1.png,a\nimg/2.png,b\n./img/1.png,a\n",
            r"row 4 lists './img/1.png' again",
        ),
        ("path,label\nimg/1.png,a\nimg/2.png,a\n", r"only one class \('a'\)"),
        ("path,label\n/etc/passwd,a\nimg/2.png,b\n", r"points outside"),
    ],
)
def test_labels_csv_errors(labels_dir: Path, text: str, match: str) -> None:
    (labels_dir / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=match):
        load_data(labels_dir)


def test_missing_file_in_csv_is_reported(labels_dir: Path) -> None:
    (labels_dir / "img" / "3.png").unlink()
    data = load_data(labels_dir, image_size=16)
    assert len(data) == 47
    assert [(Path(p).name, r) for p, r in data.skipped] == [
        ("3.png", "file not found (or a broken link)")
    ]


def test_utkface_names(utkface_dir: Path) -> None:
    data = load_data(utkface_dir, target="gender", image_size=16)
    assert data.layout == "utkface"
    assert data.classes == ["female", "male"]
    assert len(data) == 24
    assert set(data.group_columns) == {"age_bucket", "gender", "race"}
    assert set(data.frame["race"]) == {"White", "Black", "Asian", "Indian", "Others"}
    [(path, reason)] = data.skipped
    assert Path(path).name == "39_1_20170116174525125.jpg.chip.jpg" and "malformed" in reason


def test_utkface_targets(utkface_dir: Path) -> None:
    assert len(load_data(utkface_dir, target="race", image_size=16).classes) == 5
    assert load_data(utkface_dir, target="age-bucket", image_size=16).classes == ["18-29", "30-44"]
    with pytest.raises(DataError, match=r"target='smile' .* gender, race, age-bucket"):
        load_data(utkface_dir, target="smile")


def test_utkface_in_part_folders_is_read_by_name(utkface_dir: Path) -> None:
    # The in-the-wild set ships as part1/ part2/ part3/: those folders are not classes.
    files = sorted(utkface_dir.iterdir())
    for i, f in enumerate(files):
        part = utkface_dir / f"part{i % 3 + 1}"
        part.mkdir(exist_ok=True)
        f.rename(part / f.name)
    data = load_data(utkface_dir, image_size=16)
    assert data.layout == "utkface" and data.classes == ["female", "male"] and len(data) == 24


def test_utkface_sorted_into_class_folders(utkface_dir: Path) -> None:
    for f in sorted(utkface_dir.iterdir()):
        folder = utkface_dir / ("smiling" if int(f.name.split("_")[0]) % 2 else "neutral")
        folder.mkdir(exist_ok=True)
        f.rename(folder / f.name)
    # The folders are the user's labels, unless a label only the names carry is asked for.
    assert load_data(utkface_dir, image_size=16).classes == ["neutral", "smiling"]
    data = load_data(utkface_dir, target="race", image_size=16)
    assert data.layout == "utkface" and len(data.classes) == 5


def test_celeba_layout_and_partition(celeba_dir: Path) -> None:
    data = load_data(celeba_dir, target="Male", image_size=16, splits=("train", "val"))
    assert data.layout == "celeba"
    assert data.classes == ["no", "yes"]
    assert len(data) == 25  # the test partition is held out
    assert data.frame["split"].value_counts().to_dict() == {"train": 20, "val": 5}
    assert data.group_columns == ["Young"]  # the default CelebA groups that exist here
    with pytest.raises(DataError, match=r"target='Bald' .* Choose one of: Male, Smiling, Young"):
        load_data(celeba_dir, target="Bald")


def test_unknown_layout_lists_the_accepted_ones(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(
        DataError, match=r"no known data layout .* class folders .* labels CSV .* UTKFace .* CelebA"
    ):
        read_manifest(tmp_path)


def test_missing_folder_and_no_images(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"folder not found"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "y.jpg").write_text("text")
    with pytest.raises(DataError, match=r"no readable images found \(2 unreadable\)"):
        load_data(tmp_path)


def test_one_class_is_an_error(class_folders: Path) -> None:
    for f in (class_folders / "not_face").iterdir():
        f.unlink()
    (class_folders / "not_face").rmdir()
    with pytest.raises(DataError, match=r"only one class \('face'\)"):
        load_data(class_folders, image_size=16)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_every_image_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    rgb = draw(0, np.random.default_rng(0), size=40)
    if mode == "I;16":
        arr = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
        path = tmp_path / "x.png"
    elif mode == "P":
        img = rgb.convert("P")
        img.info["transparency"] = 0
        path = tmp_path / "x.png"
    else:
        img = rgb.convert(mode)
        path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    out = load_image(path, 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8
    # The bright square survives conversion (16-bit must be rescaled, not clipped to white).
    assert out[:, :6, :6].mean() > 150 and out[:, 10:, 10:].mean() < 120


def test_non_square_image_is_center_cropped(tmp_path: Path) -> None:
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, 27:33] = 255  # a white band in the middle; the crop keeps columns 20-40
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", 16)
    assert out[:, :, 8].min() > 200 and out[:, :, 0].max() < 60


def test_load_image_errors(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(UnreadableImage, match="folder"):
        load_image(tmp_path / "dir.jpg", 16)
    (tmp_path / "link.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(UnreadableImage, match="broken link"):
        load_image(tmp_path / "link.png", 16)


def test_large_data_sets_use_a_memory_mapped_cache(class_folders: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in (class_folders / "face").iterdir())
    in_ram, _ = decode_images(paths, 16)
    mapped, _ = decode_images(paths, 16, cache_file=tmp_path / "c.npy", max_memory_bytes=100)
    assert isinstance(mapped, np.memmap) and not isinstance(in_ram, np.memmap)
    assert np.array_equal(in_ram, mapped)
    add_bad_files(class_folders / "face")
    data = load_data(
        class_folders, image_size=16, cache_file=tmp_path / "d.npy", max_memory_bytes=100
    )
    assert isinstance(data.images, np.memmap) and len(data) == 40
    reference = load_data(class_folders, image_size=16)
    assert np.array_equal(np.asarray(data.images), reference.images)


def test_synthetic_data_is_skewed_and_loadable(tmp_path: Path) -> None:
    write_synthetic(tmp_path / "synth", n_faces=60, n_non_faces=30, dark_fraction=0.1, seed=3)
    data = load_data(tmp_path / "synth", image_size=32)
    assert data.classes == ["face", "not_face"] and len(data) == 90
    faces = data.frame[data.frame["label"] == "face"]
    assert 0 < (faces["skin_tone"] == "dark").sum() < 15
    assert data.group_columns == ["skin_tone", "glasses"]


def test_awkward_files_are_decoded_or_reported(class_folders: Path, tmp_path: Path) -> None:
    """Each awkward file either becomes an image or a skipped row with a reason; none crash."""
    import os

    face = class_folders / "face"
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    frames[0].save(face / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), "white").save(face / "tiny.png")
    Image.new("1", (30000, 30000)).save(face / "bomb.png")  # 900 megapixels
    (face / "folder.jpg").mkdir()
    (face / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    long_name = "x" * 240 + ".png"
    Image.new("RGB", (8, 8)).save(face / long_name)
    odd = os.fsdecode(b"caf\xe9-latin1.png")  # not valid UTF-8 on disk
    Image.new("RGB", (8, 8)).save(face / odd)
    data = load_data(class_folders, image_size=16)
    reasons = {Path(p).name: r for p, r in data.skipped}
    assert "too large to decode safely" in reasons["bomb.png"]
    assert "folder" in reasons["folder.jpg"]
    assert "not found" in reasons["broken.jpg"]
    names = {Path(p).name for p in data.frame["path"]}
    assert {"animated.gif", "tiny.png", long_name, odd} <= names
    assert len(data) == 40 + 4


def _official_layout(root: Path) -> None:
    """Rearrange the flat fixture as CelebA's own download: Anno/, Eval/, Img/."""
    for folder in ("Anno", "Eval", "Img"):
        (root / folder).mkdir()
    (root / "list_attr_celeba.txt").rename(root / "Anno" / "list_attr_celeba.txt")
    (root / "list_eval_partition.txt").rename(root / "Eval" / "list_eval_partition.txt")
    (root / "img_align_celeba").rename(root / "Img" / "img_align_celeba")


def _kaggle_layout(root: Path) -> None:
    """Rearrange the flat fixture as Kaggle's copy: CSV lists, images one folder deeper."""
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    rows = [line.split() for line in lines[2:]]
    attrs = pd.DataFrame(rows, columns=["image_id", *lines[1].split()])
    attrs.to_csv(root / "list_attr_celeba.csv", index=False)
    parts = [line.split() for line in (root / "list_eval_partition.txt").read_text().splitlines()]
    pd.DataFrame(parts, columns=["image_id", "partition"]).to_csv(
        root / "list_eval_partition.csv", index=False
    )
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        (root / name).unlink()
    (root / "inner").mkdir()
    (root / "img_align_celeba").rename(root / "inner" / "img_align_celeba")
    (root / "inner").rename(root / "img_align_celeba")


@pytest.mark.parametrize("rearrange", [_official_layout, _kaggle_layout])
def test_celeba_as_downloaded_and_from_kaggle(celeba_dir: Path, rearrange) -> None:
    flat = load_data(celeba_dir, target="Male", image_size=16, splits=("train", "val"))
    rearrange(celeba_dir)
    data = load_data(celeba_dir, target="Male", image_size=16, splits=("train", "val"))
    assert data.layout == "celeba"
    columns = ["label", "split", "Smiling", "Young"]
    pd.testing.assert_frame_equal(data.frame[columns], flat.frame[columns])
    assert all(Path(p).is_file() for p in data.frame["path"])
    np.testing.assert_array_equal(data.images, flat.images)


def test_celeba_with_a_broken_partition_file_names_it(celeba_dir: Path) -> None:
    (celeba_dir / "list_eval_partition.txt").write_text("000001.jpg 0 extra\n000002.jpg 1\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt: not a CelebA partition file"):
        load_data(celeba_dir, target="Male", image_size=16)


def test_shortcut_set_has_the_shortcut_it_promises(tmp_path: Path) -> None:
    from debias.data import write_shortcut_synthetic

    train = pd.read_csv(write_shortcut_synthetic(tmp_path / "t", n_faces=400, seed=0))
    held_out = pd.read_csv(write_shortcut_synthetic(tmp_path / "h", n_faces=400, shortcut=0.5))
    agrees = (train["skin_tone"] == "dark") == (train["label"] == "glasses")
    assert 0.92 <= agrees.mean() <= 0.98  # 95% give the answer away
    assert (train["glasses"] == "yes").eq(train["label"] == "glasses").all()
    cells = held_out.groupby(["label", "skin_tone"]).size()
    assert len(cells) == 4 and cells.min() >= 70  # every cell alike when there is no shortcut
    data = load_data(tmp_path / "t", image_size=32)
    assert data.classes == ["glasses", "no_glasses"] and data.group_columns == [
        "skin_tone",
        "glasses",
    ]
