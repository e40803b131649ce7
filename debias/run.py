"""The run folder: the one interface between training, audit, outliers and report.

A run folder holds ``config.json`` (model + train config + package version + data facts),
``checkpoint.pt`` (weights, optimiser and RNG state), ``metrics.jsonl`` (one line per epoch),
``samples.csv`` (per image: label, groups, latent density, sampling weight), ``density.pt`` (the
latent histogram of the training faces, for audits and outlier scores) and ``skipped.csv``.
Every write is atomic (temp file + rename), and checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch

from debias import errors
from debias.config import TrainConfig
from debias.model import DBVAE
from debias.resample import LatentHistogram

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SAMPLES = "samples.csv"
SKIPPED = "skipped.csv"
CACHE = "cache.npy"
DENSITY = "density.pt"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

# Cells starting with these are formulas to a spreadsheet; prefixing a quote makes them text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write a file through ``write(fh)`` into a temp file beside it, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically."""
    atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, default=str).encode()))


def _neutralize(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write a CSV atomically, with text cells that a spreadsheet would run as formulas quoted."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or pd.api.types.is_string_dtype(safe[column]):
            safe[column] = safe[column].map(_neutralize)
    atomic_write(path, lambda fh: safe.to_csv(fh, index=False))


def write_jsonl(path: str | os.PathLike[str], records: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda fh: fh.write(text.encode()))


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the per-epoch records of a run, oldest first."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Save a checkpoint atomically; only tensors and plain Python values go in."""
    atomic_write(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``, refusing pickled code.

    Raises
    ------
    RunError
        When the file is missing, truncated, or not a plain weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise errors.RunError(errors.RUN_MISSING.format(path=path.parent, missing=path.name))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise errors.RunError(errors.UNSAFE_CHECKPOINT.format(path=path, reason=reason)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise errors.RunError(errors.UNSAFE_CHECKPOINT.format(path=path, reason=reason)) from None


def load_density(run_dir: str | os.PathLike[str]) -> LatentHistogram | None:
    """Return the latent density of the run's training faces, or None if it has none saved."""
    path = Path(run_dir) / DENSITY
    if not path.is_file():
        return None
    return LatentHistogram.from_state(load_checkpoint(path))


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the parsed ``config.json`` of a run folder."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise errors.RunError(errors.RUN_MISSING.format(path=run_dir, missing=CONFIG))
    return json.loads(path.read_text())


def load_model(run_dir: str | os.PathLike[str]) -> tuple[DBVAE, dict[str, Any]]:
    """Load a run's final model, in eval mode on the CPU, with its ``config.json`` contents.

    Parameters
    ----------
    run_dir : path-like
        A folder written by :func:`debias.train`.

    Returns
    -------
    model : DBVAE
    config : dict
        ``config.json``: ``train`` (TrainConfig fields), ``data`` (classes, groups, ...), version.
    """
    config = read_config(run_dir)
    state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    train_config = TrainConfig.from_dict(config["train"])
    model = DBVAE(len(config["data"]["classes"]), train_config.model)
    model.load_state_dict(state["model"])
    return model.eval(), config
