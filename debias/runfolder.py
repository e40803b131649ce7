"""The run folder: its file names and how to read them — the interface between the jobs.

A run folder holds ``config.json`` (model + train config + package version + data facts),
``checkpoint.pt`` (weights, optimiser and RNG state), ``metrics.jsonl`` (one line per epoch),
``samples.csv`` (per image: label, groups, latent density, sampling weight), ``density.pt`` (the
latent histogram of the training faces, for audits and outlier scores) and ``skipped.csv``.
Files are written atomically through :mod:`debias.files`; checkpoints load with
``weights_only=True``; ``samples.csv`` is read here and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from debias import errors, files, methods
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


LOCK = ".lock"  # held by the one process writing the run (training or resuming)
# What a user can do about a damaged file of a run folder
DAMAGED_RUN = "Train again into a new out=, or restore the run folder from a copy."


def write_lock(run_dir: str | os.PathLike[str]) -> contextlib.AbstractContextManager[None]:
    """Return the run folder's one-writer lock (see :func:`debias.files.lock`)."""
    return files.lock(Path(run_dir) / LOCK, run_dir)


def check_not_being_written(run_dir: str | os.PathLike[str]) -> None:
    """Raise RunError while a training process writes the run: its files are not final yet."""
    files.check_unlocked(Path(run_dir) / LOCK, run_dir)


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Return the per-epoch records of a run, oldest first."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"not one JSON record per line ({str(exc).splitlines()[0][:100]})"
        raise files.damaged(path, problem, DAMAGED_RUN) from None
    if not all(isinstance(r, dict) for r in records):
        raise files.damaged(path, "holds a non-record", DAMAGED_RUN)
    return records


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Save a checkpoint atomically; only tensors and plain Python values go in."""
    # Serialised in memory first: torch's zip writer reports a full disk as an opaque
    # RuntimeError, a plain write as the OSError it is
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda fh: fh.write(buffer.getbuffer()))


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
    with open(path, "rb") as fh:
        if fh.read(1) == b"\x80":  # a bare pickle (protocol 2+), not torch.save's zip
            reason = "a bare Python pickle"
            raise errors.RunError(errors.UNSAFE_CHECKPOINT.format(path=path, reason=reason))
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; a cut-off one has no directory
        raise errors.RunError(errors.DAMAGED_CHECKPOINT.format(path=path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message goes on to advise weights_only=False: the one thing not to do here
        reason = _unpickler_reason(str(exc))
        raise errors.RunError(errors.UNSAFE_CHECKPOINT.format(path=path, reason=reason)) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile):
        raise errors.RunError(errors.DAMAGED_CHECKPOINT.format(path=path)) from None
    if not isinstance(state, dict):
        raise errors.RunError(errors.DAMAGED_CHECKPOINT.format(path=path))
    return state


def _unpickler_reason(message: str) -> str:
    """Return the line of torch's refusal that names what the file holds, not its advice."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or ["it is not made of tensors and plain values"])[0].rstrip(".")[:160]


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
    check_not_being_written(run_dir)
    if not path.is_file():
        raise errors.RunError(errors.RUN_UNFINISHED.format(path=run_dir, missing=SAMPLES))
    columns = {"path", "label", "split", *NUMERIC_SAMPLE_COLUMNS}
    frame = files.read_csv(path, DAMAGED_RUN, columns, keep_default_na=False, dtype=str)
    for column in NUMERIC_SAMPLE_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def read_skipped(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Return a run's ``skipped.csv``: the unreadable files (``path``, ``reason``)."""
    path = Path(run_dir) / SKIPPED
    if not path.is_file():
        return pd.DataFrame(columns=["path", "reason"])
    return files.read_csv(path, DAMAGED_RUN, {"path", "reason"}, keep_default_na=False, dtype=str)


def load_density(run_dir: str | os.PathLike[str]) -> LatentHistogram | None:
    """Return the latent density of the run's training faces, or None if it has none saved."""
    path = Path(run_dir) / DENSITY
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    try:
        return LatentHistogram.from_state(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
        raise errors.RunError(errors.DAMAGED_CHECKPOINT.format(path=path)) from None


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the parsed and checked ``config.json`` of a run folder.

    ``train`` holds every TrainConfig field (defaults filled in for fields an older version did
    not write); ``data`` has at least the run's ``classes``.

    Raises
    ------
    RunError
        When the folder is not a run, or its ``config.json`` is damaged.
    """
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise errors.RunError(errors.RUN_IS_FILE.format(path=run_dir))
    path = run_dir / CONFIG
    if not run_dir.exists():
        raise errors.RunError(errors.RUN_NOT_FOUND.format(path=run_dir))
    if not path.is_file() and any((run_dir / name).exists() for name in (LOCK, SKIPPED, CACHE)):
        raise errors.RunError(errors.RUN_NEVER_STARTED.format(path=run_dir))
    if not path.is_file():
        raise errors.RunError(errors.RUN_MISSING.format(path=run_dir, missing=CONFIG))
    config = files.read_json(path, DAMAGED_RUN)
    try:
        train = methods.config_from_dict(config["train"])
        train.validate()
        classes = config["data"]["classes"]
        if not (isinstance(classes, list) and len(classes) >= 2):
            raise ValueError("fewer than two classes")
        if not all(isinstance(c, str) for c in classes):
            raise TypeError("class names must be text")
    except (KeyError, TypeError, ValueError, AttributeError, errors.ConfigError) as exc:
        problem = f"is incomplete or damaged ({type(exc).__name__}: {str(exc)[:100]})"
        raise files.damaged(path, problem, DAMAGED_RUN) from None
    config["train"] = methods.config_to_dict(train)
    return config


def with_model_weights(state: dict[str, Any], weights: dict[str, Any]) -> dict[str, Any]:
    """Return a checkpoint whose model is ``weights``: the last epoch's and the kept epoch's.

    :func:`load_model` reads the kept epoch's weights when the run selects one, and a resume
    continues from the last ones; a change to the model (a repair) must reach both.
    """
    state = dict(state, model=weights)
    if (state.get("selection") or {}).get("weights") is not None:
        state["selection"] = dict(state["selection"], weights=weights)
    return state


def load_model(run_dir: str | os.PathLike[str]) -> tuple[DBVAE, dict[str, Any]]:
    """Load a run's model (the epoch its ``select`` rule kept), in eval mode on the CPU.

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
    check_not_being_written(run_dir)
    if not (Path(run_dir) / CHECKPOINT).is_file():
        raise errors.RunError(errors.NO_CHECKPOINT_YET.format(path=run_dir))
    if not (Path(run_dir) / SAMPLES).is_file():  # a checkpoint of an unfinished run
        raise errors.RunError(errors.RUN_UNFINISHED.format(path=run_dir, missing=SAMPLES))
    state = load_checkpoint(Path(run_dir) / CHECKPOINT)
    train_config = TrainConfig.from_dict(config["train"])
    # the checkpoint holds every weight: the backbone's starting weights file is not read again
    shape = dataclasses.replace(train_config.model, weights=None)
    model = DBVAE(len(config["data"]["classes"]), shape)
    try:
        # a run that selects its epoch keeps that epoch's weights beside the last ones (which a
        # resumed run continues from)
        model.load_state_dict((state.get("selection") or {}).get("weights") or state["model"])
    except (KeyError, TypeError, RuntimeError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:120]
        raise errors.RunError(errors.RUN_MISMATCH.format(path=run_dir, reason=reason)) from None
    return model.eval(), config
