"""Fixtures that build small real data sets on disk: PNG/JPEG files in every accepted layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from debias import ModelConfig, TrainConfig

SIZE = 24  # drawn image side; loaders resize to the config's image_size

# CLI options for a model small enough to train in seconds (add --image-size).
TINY_ARGS = [
    "--latent-dim",
    "8",
    "--filters",
    "4",
    "--hidden",
    "32",
    "--device",
    "cpu",
    "--batch-size",
    "16",
]


def draw(kind: int, rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """A learnable image: class 0 has a bright square top-left, class 1 bottom-right."""
    arr = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
    h = size // 2
    if kind == 0:
        arr[:h, :h] = 230
    else:
        arr[h:, h:] = 230
    return Image.fromarray(arr)


def tiny_config(**overrides: object) -> TrainConfig:
    """A model small enough to train in seconds on 2 CPU cores."""
    base: dict[str, object] = dict(
        epochs=2,
        batch_size=16,
        val_fraction=0.2,
        warmup_epochs=0,
        device="cpu",
        model=ModelConfig(image_size=16, latent_dim=8, filters=4, hidden=32),
    )
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def class_folders(tmp_path: Path, rng: np.random.Generator) -> Path:
    """faces/face/*.png and faces/not_face/*.jpg, 20 each."""
    root = tmp_path / "faces"
    for kind, name, ext in ((0, "face", "png"), (1, "not_face", "jpg")):
        (root / name).mkdir(parents=True)
        for i in range(20):
            draw(kind, rng).save(root / name / f"{i:03d}.{ext}")
    return root


@pytest.fixture
def split_class_folders(tmp_path: Path, rng: np.random.Generator) -> Path:
    """faces/train/<class>/ (16 each) and faces/test/<class>/ (4 each): no validation folder."""
    root = tmp_path / "faces"
    for split, n in (("train", 16), ("test", 4)):
        for kind, name in ((0, "face"), (1, "not_face")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                draw(kind, rng).save(root / split / name / f"{i:03d}.png")
    return root


@pytest.fixture
def labels_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """data/labels.csv with path,label,skin,age over images in data/img/; skin 'dark' is rare."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rows = ["path,label,skin,age"]
    for i in range(48):
        kind = i % 2
        draw(kind, rng).save(root / "img" / f"{i}.png")
        skin = "dark" if i % 8 == 0 else "light"
        rows.append(f"img/{i}.png,{'a' if kind == 0 else 'b'},{skin},{20 + i}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def utkface_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """UTKFace-style names (age_gender_race_date.jpg.chip.jpg) plus one malformed name."""
    root = tmp_path / "utk"
    root.mkdir()
    for i in range(24):
        gender, race = i % 2, i % 5
        draw(gender, rng).save(
            root / f"{20 + i}_{gender}_{race}_2017011{i:02d}.jpg.chip.jpg", "JPEG"
        )
    draw(0, rng).save(root / "39_1_20170116174525125.jpg.chip.jpg", "JPEG")  # lacks the race field
    return root


@pytest.fixture
def celeba_dir(tmp_path: Path, rng: np.random.Generator) -> Path:
    """CelebA's layout: img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt."""
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = ["Male", "Smiling", "Young"]
    attr_lines = [str(30), " ".join(names)]
    part_lines = []
    for i in range(30):
        male = 1 if i % 2 else -1
        draw(int(male > 0), rng).save(root / "img_align_celeba" / f"{i:06d}.jpg", "JPEG")
        smiling = 1 if i % 3 == 0 else -1
        attr_lines.append(f"{i:06d}.jpg  {male:2d} {smiling:2d}  1")
        part_lines.append(f"{i:06d}.jpg {0 if i < 20 else 1 if i < 25 else 2}")
    (root / "list_attr_celeba.txt").write_text("\n".join(attr_lines) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(part_lines) + "\n")
    return root


def add_bad_files(folder: Path) -> list[str]:
    """Add a zero-byte file, a truncated JPEG and a text file named .jpg; return their names."""
    (folder / "empty.jpg").write_bytes(b"")
    good = folder / "truncated.jpg"
    draw(0, np.random.default_rng(1), size=64).save(good, "JPEG")
    good.write_bytes(good.read_bytes()[:300])
    (folder / "notes.jpg").write_text("this is not an image")
    return ["empty.jpg", "truncated.jpg", "notes.jpg"]


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small DB-VAE run on the synthetic faces (15% dark skin): (data folder, run folder)."""
    from debias import train, write_synthetic

    root = tmp_path_factory.mktemp("synth_run")
    write_synthetic(root / "synth", n_faces=300, n_non_faces=300, dark_fraction=0.15, seed=0)
    config = tiny_config(
        data=str(root / "synth"),
        out=str(root / "run"),
        epochs=3,
        weighting="rarity",  # the paper's DB-VAE: the outlier and report tests read its latents
        batch_size=32,
        model=ModelConfig(image_size=32, latent_dim=16, filters=8, hidden=64),
    )
    train(config)
    return root / "synth", root / "run"
