"""Procedurally drawn synthetic faces and non-faces, so the tool can be tried with no download.

Two data sets, each with its ground-truth attributes in ``labels.csv`` so audits and reports have
groups to measure:

- :func:`write_synthetic`: face detection (faces vs non-faces), skewed on purpose (by default 90%
  of faces have light skin). Dark-skinned faces are also harder: their features have less
  contrast, like under-exposed photos of real dark-skinned faces.
- :func:`write_shortcut_synthetic`: does the face wear glasses? In the training set skin tone
  agrees with the answer for most faces (dark skin with glasses, light skin without), as gender
  goes with age in the shared data's ``utk-age`` task; skin tone is far easier to see than thin
  glasses, so a plain classifier learns it and fails on the faces that break the rule.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from debias import files

LIGHT_SKIN = ((236, 200, 170), (225, 185, 150), (245, 215, 190))
DARK_SKIN = ((110, 72, 48), (90, 58, 38), (125, 85, 60))
HAIR = ((30, 25, 20), (90, 60, 30), (200, 170, 100), (60, 40, 30))

# A 4x supersampled canvas, downsampled at the end, gives anti-aliased shapes.
SUPERSAMPLE = 4


def _jitter(rng: np.random.Generator, color: tuple[int, int, int], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _background(rng: np.random.Generator, s: int) -> Image.Image:
    a, b = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
    t = np.linspace(0, 1, s)[:, None, None]
    grad = (a * (1 - t) + b * t).astype(np.float64) * np.ones((1, s, 1))
    grad += rng.normal(0, 12, size=(s, s, 3))
    return Image.fromarray(np.clip(grad, 0, 255).astype(np.uint8))


def draw_face(rng: np.random.Generator, size: int, *, dark: bool, glasses: bool) -> Image.Image:
    """Draw one face: head, hair, eyes, nose and mouth at a random pose and scale."""
    s = size * SUPERSAMPLE
    img = _background(rng, s)
    d = ImageDraw.Draw(img)
    skin = _jitter(rng, (DARK_SKIN if dark else LIGHT_SKIN)[rng.integers(3)], 12)
    cx, cy = s / 2 + rng.normal(0, s * 0.04), s / 2 + rng.normal(0, s * 0.04)
    w, h = s * rng.uniform(0.28, 0.36), s * rng.uniform(0.36, 0.44)
    hair = _jitter(rng, HAIR[rng.integers(len(HAIR))], 15)
    d.ellipse([cx - w * 1.08, cy - h * 1.1, cx + w * 1.08, cy + h * 0.3], fill=hair)
    d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=skin)
    # Features are a blend of the skin and a dark tone: low contrast on dark skin.
    feature = tuple(int(0.45 * c) for c in skin)
    eye_y, eye_dx = cy - h * rng.uniform(0.1, 0.25), w * rng.uniform(0.35, 0.5)
    r = s * 0.035
    for ex in (cx - eye_dx, cx + eye_dx):
        d.ellipse(
            [ex - 2 * r, eye_y - r, ex + 2 * r, eye_y + r], fill=_jitter(rng, (235, 235, 230), 10)
        )
        d.ellipse([ex - r, eye_y - r, ex + r, eye_y + r], fill=feature)
        if glasses:
            d.ellipse(
                [ex - 3.2 * r, eye_y - 2.5 * r, ex + 3.2 * r, eye_y + 2.5 * r],
                outline=(20, 20, 20),
                width=max(1, s // 64),
            )
    d.line(
        [cx, eye_y + r * 2, cx - r, cy + h * 0.25, cx + r * 0.5, cy + h * 0.3],
        fill=feature,
        width=max(1, s // 80),
    )
    mouth_w, mouth_y = w * rng.uniform(0.35, 0.6), cy + h * rng.uniform(0.45, 0.6)
    smile = rng.uniform(0, s * 0.05)
    d.chord(
        [cx - mouth_w, mouth_y - smile, cx + mouth_w, mouth_y + smile + r],
        0,
        180,
        fill=_jitter(rng, (150, 60, 60), 25) if not dark else feature,
    )
    img = img.rotate(
        rng.normal(0, 8), resample=Image.Resampling.BILINEAR, fillcolor=img.getpixel((0, 0))
    )
    return img.resize((size, size), Image.Resampling.LANCZOS)


def draw_non_face(rng: np.random.Generator, size: int) -> Image.Image:
    """Draw one non-face: blobs, boxes and strokes, some in skin colours, over a gradient."""
    s = size * SUPERSAMPLE
    img = _background(rng, s)
    d = ImageDraw.Draw(img)
    palette = LIGHT_SKIN + DARK_SKIN + HAIR
    for _ in range(rng.integers(2, 7)):
        color = _jitter(rng, palette[rng.integers(len(palette))], 40)
        x0, y0 = rng.uniform(0, s * 0.8, size=2)
        x1, y1 = x0 + rng.uniform(s * 0.1, s * 0.6), y0 + rng.uniform(s * 0.1, s * 0.6)
        kind = rng.integers(3)
        if kind == 0:
            d.ellipse([x0, y0, x1, y1], fill=color)
        elif kind == 1:
            d.rectangle([x0, y0, x1, y1], fill=color)
        else:
            d.line([x0, y0, x1, y1], fill=color, width=int(rng.integers(2, s // 12)))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3)))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def write_synthetic(
    out: str | os.PathLike[str],
    *,
    n_faces: int = 1200,
    n_non_faces: int = 1200,
    dark_fraction: float = 0.1,
    glasses_fraction: float = 0.2,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a synthetic face-detection data set: class folders plus ``labels.csv``.

    Parameters
    ----------
    out : path-like
        Folder to create; a synthetic set already there is replaced.
    n_faces, n_non_faces : int
        How many images of each class.
    dark_fraction : float
        Share of faces with dark skin (the rare group).
    glasses_fraction : float
        Share of faces wearing glasses (a second attribute).
    size : int
        Image side in pixels.
    seed : int
        Seed of the drawing; the same seed writes the same images.

    Returns
    -------
    pathlib.Path
        The labels CSV (columns ``path,label,skin_tone,glasses``).

    Examples
    --------
    >>> write_synthetic("faces", n_faces=100, n_non_faces=100)  # doctest: +SKIP
    """
    rng = np.random.default_rng(seed)

    def draw(root: Path) -> list[tuple[str, ...]]:
        rows = []
        for i in range(n_faces):
            dark, glasses = rng.random() < dark_fraction, rng.random() < glasses_fraction
            path = f"face/{i:05d}.png"
            draw_face(rng, size, dark=dark, glasses=glasses).save(root / path)
            rows.append((path, "face", "dark" if dark else "light", "yes" if glasses else "no"))
        for i in range(n_non_faces):
            path = f"not_face/{i:05d}.png"
            draw_non_face(rng, size).save(root / path)
            rows.append((path, "not_face", "", ""))
        return rows

    return _write_set(out, ("face", "not_face"), draw)


def write_shortcut_synthetic(
    out: str | os.PathLike[str],
    *,
    n_faces: int = 1200,
    shortcut: float = 0.95,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a glasses-or-not data set in which skin tone is a shortcut to the answer.

    Half of the faces wear glasses. A face's skin is dark when it wears glasses and light when it
    does not — for a ``shortcut`` share of the faces; the others break the rule. A held-out set
    drawn with ``shortcut=0.5`` has every (glasses, skin tone) cell alike.

    Parameters
    ----------
    out : path-like
        Folder to create (``glasses/``, ``no_glasses/`` and ``labels.csv``).
    n_faces : int
        How many faces.
    shortcut : float
        Share of faces whose skin tone agrees with the answer (0.5: no shortcut).
    size : int
        Image side in pixels.
    seed : int
        Seed of the drawing; the same seed writes the same images.

    Returns
    -------
    pathlib.Path
        The labels CSV (columns ``path,label,skin_tone,glasses``).
    """
    rng = np.random.default_rng(seed)

    def draw(root: Path) -> list[tuple[str, ...]]:
        rows = []
        for i in range(n_faces):
            glasses = bool(rng.random() < 0.5)
            dark = glasses if rng.random() < shortcut else not glasses
            label = "glasses" if glasses else "no_glasses"
            path = f"{label}/{i:05d}.png"
            draw_face(rng, size, dark=dark, glasses=glasses).save(root / path)
            rows.append((path, label, "dark" if dark else "light", "yes" if glasses else "no"))
        return rows

    return _write_set(out, ("glasses", "no_glasses"), draw)


LABELS = "labels.csv"


def _write_set(
    out: str | os.PathLike[str],
    classes: tuple[str, ...],
    draw: Callable[[Path], list[tuple[str, ...]]],
) -> Path:
    """Write a data set whole: class folders, the images ``draw`` saves, then ``labels.csv``.

    The set is staged beside ``out`` and lands in one rename (a kill leaves the previous set or
    none); a synthetic set already at ``out`` is replaced, other files never are.
    """
    with files.staged_folder(out, marker=LABELS, what="a synthetic data set") as root:
        for name in classes:
            (root / name).mkdir()
        _write_labels(root, draw(root))
    return Path(out) / LABELS


def _write_labels(root: Path, rows: list[tuple[str, ...]]) -> None:
    """Write ``labels.csv`` (``path,label,skin_tone,glasses``)."""
    frame = pd.DataFrame(rows, columns=["path", "label", "skin_tone", "glasses"])
    frame.to_csv(root / LABELS, index=False)
