"""The run folder: its file names and how to read them — the interface between the jobs.

A run folder holds ``config.json`` (model + train config + package version + data facts),
``checkpoint.pt`` (weights, optimiser and RNG state), ``metrics.jsonl`` (one line per epoch),
``samples.csv`` (per image: label, groups, latent density, sampling weight), ``density.pt`` (the
latent histogram of the training faces, for audits and outlier scores) and ``skipped.csv``.
Files are written atomically through :mod:`debias.files`; checkpoints load with
``weights_only=True``; ``samples.csv`` is read here and nowhere else.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from debias import errors
from debias.config import TrainConfig
from debias.files import atomic_write
from debias.model import DBVAE
from debias.resample import LatentHistogram

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SAMPLES = "samples.csv"
SKIPPED = "skipped.csv"
CACHE = "cache.npy"
DENSITY = "density.pt"
NUMERIC_SAMPLE_COLUMNS = ("latent_log_density", "sampling_weight")


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


def read_samples(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Return a run's ``samples.csv``: empty cells stay empty strings, numbers are numbers.

    Group columns keep "" for a missing value (as the manifest writes them); the numeric columns
    (``latent_log_density``, ``sampling_weight``) are floats with NaN where they have no value.

    Raises
    ------
    RunError
        When the run has no ``samples.csv`` (it was stopped before training finished).
    """
    path = Path(run_dir) / SAMPLES
    if not path.is_file():
        raise errors.RunError(errors.RUN_MISSING.format(path=run_dir, missing=SAMPLES))
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    for column in NUMERIC_SAMPLE_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def read_skipped(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Return a run's ``skipped.csv``: the unreadable files (``path``, ``reason``)."""
    path = Path(run_dir) / SKIPPED
    if not path.is_file():
        return pd.DataFrame(columns=["path", "reason"])
    return pd.read_csv(path, keep_default_na=False, dtype=str)


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
