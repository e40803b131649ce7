"""Decode image files of any mode and size into uint8 RGB arrays of one square size.

This is the only place that opens image files, so every layout converts images the same way and
every unreadable file is reported with one reason.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

# torchvision's IMG_EXTENSIONS plus GIF, which PIL reads too.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)

# Above this many bytes the decoded cache goes to a memory-mapped file instead of RAM.
DEFAULT_CACHE_BYTES = 4 * 1024**3


class UnreadableImage(Exception):
    """An image file that cannot be decoded; ``str(exc)`` is the one-line reason."""


def is_image_name(name: str) -> bool:
    """Return whether a file name has an image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float images: PIL's convert("RGB") clips them to 255, so scale by their range.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """Decode one image file into a ``(3, size, size)`` uint8 RGB array.

    The image is EXIF-rotated, converted to RGB (grayscale, palette, transparency, CMYK and
    16-bit images included), scaled so its shorter side is ``size`` and centre-cropped.

    Parameters
    ----------
    path : path-like
        The image file.
    size : int
        Side of the square output in pixels.

    Returns
    -------
    numpy.ndarray
        Array of shape ``(3, size, size)`` and dtype uint8.

    Raises
    ------
    UnreadableImage
        When the file is missing, empty, not an image, truncated or too large to decode safely.
    """
    p = Path(path)
    if p.is_dir():
        raise UnreadableImage("is a folder, not an image file")
    try:
        if p.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
        with warnings.catch_warnings():
            # A decompression bomb warning means an image large enough to exhaust memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                if img.format == "JPEG":
                    img.draft("RGB", (size, size))  # decode at reduced scale: much faster
                img.load()
                img = ImageOps.exif_transpose(img)
                img = _to_rgb(img)
                img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
    except UnreadableImage:
        raise
    except Image.UnidentifiedImageError:
        raise UnreadableImage("not an image PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"too large to decode safely ({exc})") from None
    except FileNotFoundError:
        raise UnreadableImage("file not found (or a broken link)") from None
    except PermissionError:
        raise UnreadableImage("permission denied") from None
    except Exception as exc:  # PIL raises many types for corrupt files; all mean "unreadable"
        raise UnreadableImage(f"cannot decode ({type(exc).__name__}: {exc})") from None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class _DecodeDataset(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths = paths
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return i, load_image(self.paths[i], self.size), ""
        except UnreadableImage as exc:
            return i, None, str(exc)


def _collate(batch: list) -> list:
    return batch


def decode_images(
    paths: Sequence[str],
    size: int,
    *,
    cache_file: str | os.PathLike[str] | None = None,
    max_memory_bytes: int = DEFAULT_CACHE_BYTES,
    num_workers: int = 0,
    on_advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode every image once into a uint8 cache of shape ``(N, 3, size, size)``.

    The cache is held in RAM when it fits in ``max_memory_bytes``, otherwise it is a memory-mapped
    file at ``cache_file`` so large folders never sit in memory at once.

    Parameters
    ----------
    paths : sequence of str
        Image files.
    size : int
        Side of the square images.
    cache_file : path-like, optional
        Where to memory-map the cache when it does not fit in memory.
    max_memory_bytes : int
        Largest cache kept in RAM.
    num_workers : int
        DataLoader worker processes for decoding.
    on_advance : callable, optional
        Called with the number of images decoded since the last call (for progress bars).

    Returns
    -------
    cache : numpy.ndarray
        Decoded images; rows of unreadable files are zero.
    failures : dict of int to str
        Index of each unreadable file and the reason.
    """
    n = len(paths)
    shape = (n, 3, size, size)
    if n * 3 * size * size > max_memory_bytes and cache_file is not None:
        cache = np.lib.format.open_memmap(cache_file, mode="w+", dtype=np.uint8, shape=shape)
    else:
        cache = np.zeros(shape, dtype=np.uint8)
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(list(paths), size),
        batch_size=64,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    failures: dict[int, str] = {}
    for batch in loader:
        for i, arr, reason in batch:
            if arr is None:
                failures[i] = reason
            else:
                cache[i] = arr
        if on_advance is not None:
            on_advance(len(batch))
    return cache, failures
