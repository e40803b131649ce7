"""Training: ``train(config)`` runs the DB-VAE (or the plain baseline) end to end into a run folder.

Read top to bottom, as the loop runs: set up (data, model, optimiser), restore (when resuming),
then per epoch ask the weighting for the epoch's sampling weights, train on a weighted draw,
validate, record and checkpoint; at the end write ``samples.csv`` and the training density.
Devices and processes live here and in :mod:`debias.device` / :mod:`debias.distributed`; the
model and the weighting methods do not know where they run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import debias
from debias import distributed, errors, files, methods, runfolder
from debias.augment import augment
from debias.classes import named_positive
from debias.config import TrainConfig
from debias.data import FaceData, load_data
from debias.device import select_device
from debias.encode import batches, encode
from debias.fairness.groups import check_groups
from debias.grouplabels import GroupLabels
from debias.model import DBVAE, Loss, dbvae_loss, preprocess
from debias.progress import Listener, SilentListener
from debias.resample import LatentHistogram, effective_sample_size
from debias.selection import EpochSelection, validation_scores
from debias.weighting import EpochView, EpochWeights, Weighting

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is and what it learned."""

    run_dir: Path
    model: DBVAE
    data: FaceData
    metrics: list[dict[str, Any]]
    config: TrainConfig  # the settings it ran with (a resumed run's, with its new --epochs)


def train(
    config: TrainConfig, *, method: Weighting | None = None, listener: Listener | None = None
) -> TrainResult:
    """Train a DB-VAE (or, with ``config.baseline``, the plain classifier) into a run folder.

    Parameters
    ----------
    config : TrainConfig
        What to train on and how. ``config.out`` is the run folder (default ``runs/<date-time>``).
    method : Weighting, optional
        The debiasing method, e.g. ``ErrorFeedback(share=0.5)`` (:mod:`debias.weighting`); it
        replaces ``config.method`` and the method the flat options name. The object is copied:
        what the run learns is not written back into it.
    listener : Listener, optional
        Receives progress events.

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError, DataError, RunError
        For invalid options, unusable data, or an ``out`` folder that already holds a run.

    Examples
    --------
    >>> from debias import TrainConfig, train
    >>> result = train(TrainConfig(data="faces/", epochs=3))  # doctest: +SKIP
    """
    if method is not None:
        config = dataclasses.replace(config, method=method)
    if config.group_labels and config.select == "last":  # group labels choose the epoch
        config = dataclasses.replace(config, select="worst-group")
    config.validate()
    if config.out is None and distributed.from_env().distributed:
        raise errors.ConfigError(errors.TORCHRUN_OUT)
    run_dir = Path(config.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists() and not run_dir.is_dir():
        raise errors.RunError(errors.OUT_IS_FILE.format(path=run_dir))
    created = not run_dir.exists()
    main = distributed.from_env().main  # under torchrun rank 0 checks and writes the folder
    if not created and main:
        runfolder.check_not_being_written(run_dir)
        _refuse_existing_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Absolute data paths: the run can be resumed, audited and reported from any directory
    config = dataclasses.replace(
        config,
        out=str(run_dir),
        data=_absolute(config.data),
        labels=_absolute(config.labels),
        group_labels=_absolute(config.group_labels),
        model=dataclasses.replace(config.model, weights=_absolute(config.model.weights)),
    )
    with _writing(run_dir, created):
        if main:
            _refuse_existing_run(run_dir)  # again, holding the lock: another writer may have won
        return _fit(config, run_dir, None, listener or SilentListener())


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    device: str | None = None,
    lr: float | None = None,
    data: str | None = None,
    labels: str | None = None,
    allow_changed_data: bool = False,
    method: Weighting | None = None,
    listener: Listener | None = None,
) -> TrainResult:
    """Finish an interrupted run; it ends as an uninterrupted run would.

    A run killed at any point resumes: before its first checkpoint it starts over from its
    ``config.json``; after its last epoch it writes what it had not written yet.

    Parameters
    ----------
    run_dir : path-like
        The run folder.
    epochs : int, optional
        A new total number of epochs (to train further).
    device : str, optional
        Continue on another device.
    lr : float, optional
        A new peak learning rate from here on (after a loss that became NaN).
    data, labels : str, optional
        Where the run's data is now, if it moved. Its files must be the ones the run started with.
    allow_changed_data : bool
        Continue even though files were added, removed or changed since the run started.
    method : Weighting, optional
        The run's method again: needed only for a method of your own, which a run folder names
        but cannot rebuild.
    listener : Listener, optional
        Receives progress events.

    Raises
    ------
    RunError
        When the folder is not a run, is being written, has finished, or its data changed.
    """
    run_dir = Path(run_dir)
    saved = runfolder.read_config(run_dir)
    config = methods.config_from_dict(saved["train"])
    changes = {"epochs": epochs, "device": device, "lr": lr, "method": method}
    changes.update({"data": _absolute(data), "labels": _absolute(labels)})
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    config.validate()
    with _writing(run_dir, created=False):
        checkpoint = run_dir / runfolder.CHECKPOINT
        state = runfolder.load_checkpoint(checkpoint) if checkpoint.exists() else None
        finished = all(
            (run_dir / name).is_file() for name in (runfolder.SAMPLES, runfolder.DENSITY)
        )
        if state is not None and state.get("epoch", 0) >= config.epochs and finished:
            raise errors.RunError(errors.RUN_FINISHED.format(path=run_dir, epochs=config.epochs))
        fingerprint = None if allow_changed_data else saved["data"].get("fingerprint")
        return _fit(config, run_dir, state, listener or SilentListener(), fingerprint)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _refuse_existing_run(run_dir: Path) -> None:
    if (run_dir / runfolder.CHECKPOINT).exists() or (run_dir / runfolder.CONFIG).exists():
        raise errors.RunError(errors.RUN_EXISTS.format(path=run_dir))


@contextlib.contextmanager
def _writing(run_dir: Path, created: bool) -> Iterator[None]:
    """Hold the run's one-writer lock; remove a folder this call made if it failed too early.

    Too early: before its first checkpoint, when there is nothing to resume from.

    On torchrun only rank 0 writes the folder, so only it takes the lock.
    """
    if not distributed.from_env().main:
        yield
        return
    with runfolder.write_lock(run_dir):
        try:
            yield
        except Exception:
            if created and not (run_dir / runfolder.CHECKPOINT).exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing to resume from
            raise


# ---------------------------------------------------------------------------------------------
# The loop


def _fit(
    config: TrainConfig,
    run_dir: Path,
    state: dict[str, Any] | None,
    listener: Listener,
    fingerprint: str | None = None,
) -> TrainResult:
    cluster = distributed.from_env()
    device = distributed.join(cluster, select_device(config.device))
    if not cluster.main:  # one progress display and one writer: rank 0
        listener = SilentListener()
    data = _load(config, run_dir, cluster, listener)
    needed = fingerprint is not None or cluster.main  # to compare, or to record in config.json
    data_now = data_fingerprint(data) if needed else None
    if fingerprint is not None and data_now != fingerprint:
        raise errors.RunError(errors.DATA_CHANGED.format(path=run_dir, data=data.source))
    s = _set_up(config, data, device, cluster)
    if config.select not in ("last", "worst-group") and len(s.val_idx) == 0:
        raise errors.ConfigError(
            errors.NO_VALIDATION_TO_SELECT.format(rule=config.select, data=data.source)
        )
    weighting = copy.deepcopy(methods.method_of(config))  # learns: never the caller's object
    selection = EpochSelection(config.select)
    labelled = None
    if config.group_labels and cluster.main:
        labelled = GroupLabels.load(config, s.data.classes, listener)
    history = _restore(s, weighting, selection, state, run_dir) if state is not None else []
    if cluster.main:
        _write_config(s, run_dir, data_now)
    last: EpochWeights | None = None
    for epoch in range(len(history), config.epochs):
        distributed.sync_buffers(s.model, cluster)
        last = weighting.epoch_weights(_epoch_view(s, epoch, listener))
        record = _train_epoch(s, epoch, last, run_dir, listener)
        if not cluster.main:
            continue
        record.update(_validate(s))
        if labelled is not None:
            record["val_worst_group"] = labelled.worst_group(s.model, s.device)
        selection.update(epoch, record, s.model)
        record["kept_epoch"] = 1 + (epoch if selection.epoch_ is None else selection.epoch_)
        history.append(record)
        _checkpoint(s, weighting, selection, epoch, history, run_dir)
        listener.epoch_end(record)
    if selection.weights_ is not None:  # the run's model is the kept epoch's, not the last's
        s.model.load_state_dict(selection.weights_)
    if cluster.main:
        if labelled is not None:
            _repair_at_end(s, labelled, run_dir)
        _write_samples(s, last, weighting, run_dir)
    (run_dir / _cache_name(cluster)).unlink(missing_ok=True)
    distributed.leave(cluster)
    return TrainResult(run_dir, s.model.eval(), data, history, config)


@dataclass
class _Setup:
    """Everything one training process holds: data, splits, model, optimiser and their state."""

    config: TrainConfig
    data: FaceData
    train_idx: np.ndarray
    val_idx: np.ndarray
    class_mask: torch.Tensor  # (C,) 1.0 for the classes the VAE models
    positive: str | None
    device: torch.device
    cluster: distributed.Cluster
    train_frame: pd.DataFrame  # the training rows' manifest, in train_idx order
    model: DBVAE
    trained: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    sampler_rng: torch.Generator  # the epoch's draw: the same on every rank
    share: int  # draws this rank trains on per epoch
    steps_per_epoch: int


def _load(
    config: TrainConfig, run_dir: Path, cluster: distributed.Cluster, listener: Listener
) -> FaceData:
    """Decode the data first: the slowest step and the one most likely to fail on bad input."""
    data = load_data(
        config.data,
        labels=config.labels,
        target=config.target,
        groups=config.groups,
        image_size=config.model.image_size,
        strict=config.strict,
        splits=("train", "val"),
        cache_file=run_dir / _cache_name(cluster),
        num_workers=config.num_workers,
        on_start=lambda n: listener.phase("decode", n),
        on_advance=listener.advance,
    )
    if data.skipped:
        log.warning(
            "%d file(s) skipped as unreadable; listed in %s",
            len(data.skipped),
            run_dir / runfolder.SKIPPED,
        )
    if cluster.main:
        skipped = pd.DataFrame(data.skipped, columns=["path", "reason"])
        files.write_csv(run_dir / runfolder.SKIPPED, skipped)
    check_groups(data.frame, config.balance_groups or [])
    return data


def _set_up(
    config: TrainConfig, data: FaceData, device: torch.device, cluster: distributed.Cluster
) -> _Setup:
    train_idx, val_idx = split_indices(data, config.val_fraction, config.seed)
    class_mask, positive = vae_mask_for(config, data.classes)
    with torch.random.fork_rng(devices=[]):  # seeds the initial weights, not the caller's RNG
        torch.manual_seed(config.seed)
        # channels_last: the layout oneDNN and cuDNN convolutions run fastest in
        model = DBVAE(len(data.classes), config.model).to(device, memory_format=torch.channels_last)
    # fused: one kernel for all parameters instead of a dozen small ops per tensor per step
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused)
    # Each epoch draws about as many images as there are; each rank trains on its share of them.
    share = distributed.share(len(train_idx), cluster)
    steps_per_epoch = math.ceil(share / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(config.lr_schedule, config.epochs * steps_per_epoch)
    )
    amp_dtype = _amp_dtype(config.precision, device)
    # float16 gradients underflow without loss scaling; bfloat16 has float32's range
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    trained: torch.nn.Module = model
    if cluster.distributed:  # gradients averaged over the ranks at every step
        trained = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.baseline,  # the baseline's loss leaves out the decoder
        )
    return _Setup(
        config=config,
        data=data,
        train_idx=train_idx,
        val_idx=val_idx,
        class_mask=class_mask,
        positive=positive,
        device=device,
        cluster=cluster,
        train_frame=data.frame.iloc[train_idx].reset_index(drop=True),
        model=model,
        trained=trained,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        amp_dtype=amp_dtype,
        # Augmentation and the VAE's noise get generators seeded per epoch and rank instead,
        # so a resumed run repeats them without saving them.
        sampler_rng=torch.Generator().manual_seed(config.seed),
        share=share,
        steps_per_epoch=steps_per_epoch,
    )


def _restore(
    s: _Setup,
    weighting: Weighting,
    selection: EpochSelection,
    state: dict[str, Any],
    run_dir: Path,
) -> list[dict[str, Any]]:
    """Load a checkpoint into the set-up, weighting and selection; return its epochs' metrics."""
    if state["classes"] != s.data.classes:
        raise errors.RunError(
            errors.RESUME_CLASSES.format(
                path=run_dir, now=s.data.classes, checkpoint=state["classes"]
            )
        )
    s.model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        s.scaler.load_state_dict(state["scaler"])
    s.sampler_rng.set_state(state["sampler_rng"])
    weighting.load_state_dict(state.get("weighting") or {})
    selection.load_state_dict(state.get("selection") or {})
    # A new --lr on resume replaces the peak the schedule decays from, from this step on
    factor = s.scheduler.lr_lambdas[0](s.scheduler.last_epoch)
    s.scheduler.base_lrs = [s.config.lr for _ in s.optimizer.param_groups]
    for group in s.optimizer.param_groups:
        group["initial_lr"] = s.config.lr
        group["lr"] = s.config.lr * factor
    history = json.loads(state["metrics"])
    # The checkpoint carries the metrics of its epochs: a kill just before or after the metrics
    # file was updated neither loses a line nor repeats one.
    if s.cluster.main:
        files.write_jsonl(run_dir / runfolder.METRICS, history)
    return history


def _epoch_view(s: _Setup, epoch: int, listener: Listener | None = None) -> EpochView:
    """Describe the epoch to the weighting: the training rows, a lazy encoder, trial epochs."""
    y = s.data.y[s.train_idx]

    def encoder(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        # Each rank encodes its block of the rows and the blocks are gathered in order, so every
        # rank computes the same weights.
        part = s.train_idx[rows][distributed.block(len(rows), s.cluster)]
        mu, probs = encode(s.model, s.data.images, part, device=s.device)
        return (
            distributed.gather_blocks(mu, len(rows), s.cluster),
            distributed.gather_blocks(probs, len(rows), s.cluster),
        )

    return EpochView(
        epoch=epoch,
        y=y,
        modelled=(s.class_mask[torch.from_numpy(y)] > 0).numpy(),
        frame=s.train_frame,
        encoder=encoder,
        trial=lambda weights, stream: _trial_epoch(
            s, epoch, weights, stream, listener or SilentListener()
        ),
        seed=s.config.seed,
    )


def _trial_epoch(
    s: _Setup, epoch: int, weights: torch.Tensor, stream: int, listener: Listener
) -> torch.Tensor:
    """Train a copy of the model one epoch on a draw by ``weights``; return its probabilities.

    The copy starts from the model and the optimiser's state, at the current learning rate, and
    trains with the classification loss only (what a weighting asks is what the classifier
    learns); the run's model, optimiser and generators are untouched. Returns the class
    probabilities ``(N, C)`` of every training row under the copy. Every rank trains the same
    copy on the whole draw with the same generators and takes rank 0's answer, so all ranks
    weight alike even where a GPU's kernels are not deterministic.
    """
    config, device = s.config, s.device
    model = copy.deepcopy(s.model)
    optimizer = torch.optim.Adam(model.parameters())
    # the run's moments, settings and lr; copied, as loading keeps tensors already in place
    optimizer.load_state_dict(copy.deepcopy(s.optimizer.state_dict()))
    # streams 0 and 1 of the epoch are the run's augmentation and noise; rank 0's for every rank
    draw_rng = _epoch_generator(config.seed, epoch, 0, 2 + 2 * stream, torch.device("cpu"))
    augment_rng = _epoch_generator(config.seed, epoch, 0, 3 + 2 * stream, torch.device("cpu"))
    rows = draw_epoch(weights, s.train_idx, len(s.train_idx), draw_rng)
    listener.phase(f"trial epoch {stream + 1}", math.ceil(len(rows) / config.batch_size))
    model.train()
    for chunk, x_u8 in batches(s.data.images, rows, config.batch_size):
        x = preprocess(x_u8.to(device, non_blocking=True))
        if config.augment:
            x = augment(x, augment_rng)
        logits = model.encode(x.contiguous(memory_format=torch.channels_last))[0]
        loss = F.cross_entropy(logits, torch.from_numpy(s.data.y[chunk]).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        listener.advance(1, loss=loss.item())
    _, probs = encode(model, s.data.images, s.train_idx, device=device)
    return distributed.broadcast(probs, s.cluster)


def _train_epoch(
    s: _Setup, epoch: int, weighted: EpochWeights, run_dir: Path, listener: Listener
) -> dict[str, Any]:
    """Draw the epoch's sample by ``weighted`` and train on it; return the epoch's statistics."""
    config, cluster, device = s.config, s.cluster, s.device
    t0 = time.perf_counter()
    weights = weighted.weights
    ess_fraction = effective_sample_size(weights) / len(weights)
    draw = draw_epoch(weights, s.train_idx, s.share * cluster.world, s.sampler_rng)
    mine = draw[cluster.rank * s.share : (cluster.rank + 1) * s.share]
    augment_rng = _epoch_generator(config.seed, epoch, cluster.rank, 0, torch.device("cpu"))
    noise_rng = _epoch_generator(config.seed, epoch, cluster.rank, 1, device)
    listener.phase(f"epoch {epoch + 1}/{config.epochs}", s.steps_per_epoch)
    all_modelled = bool((s.class_mask > 0).all())  # else decode only the images the VAE models
    class_mask = s.class_mask.to(device)
    s.model.train()
    sums = dict.fromkeys(("loss", "classification", "reconstruction", "kl", "correct", "seen"), 0.0)
    for chunk, x_u8 in batches(s.data.images, mine, config.batch_size):
        x = preprocess(x_u8.to(device, non_blocking=True))
        if config.augment:
            x = augment(x, augment_rng)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(s.data.y[chunk]).to(device)
        vae_mask = class_mask[y]
        with torch.autocast(device.type, dtype=s.amp_dtype, enabled=s.amp_dtype is not None):
            out = s.trained(x, noise_rng, decode=None if all_modelled else vae_mask > 0)
        loss = dbvae_loss(
            out,
            x,
            y,
            vae_mask,
            kl_weight=config.kl_weight,
            recon=config.recon,
            use_vae=not config.baseline,
        )
        _check_finite(loss.total, s, run_dir, epoch)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss.total).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.scheduler.step()
        _accumulate(sums, loss, out.logits, y)
        listener.advance(
            1, loss=loss.total.item(), acc=sums["correct"] / sums["seen"], ess=ess_fraction
        )
    seconds = time.perf_counter() - t0
    distributed.reduce_sums(sums, cluster, device)
    record: dict[str, Any] = {"epoch": epoch + 1}
    record.update({f"train_{k}": v / sums["seen"] for k, v in sums.items() if k != "seen"})
    record["train_acc"] = record.pop("train_correct")
    record.update(_sampling_record(s, weighted))
    record.update(
        seconds=seconds,
        images_per_s=len(draw) / seconds,
        processes=cluster.world,
        lr=s.scheduler.get_last_lr()[0],
    )
    return record


def _check_finite(loss: torch.Tensor, s: _Setup, run_dir: Path, epoch: int) -> None:
    """Stop the run, on every process at once, when a batch's loss is NaN or infinite."""
    if not distributed.all_finite(loss, s.cluster):
        raise errors.DebiasError(
            errors.LOSS_NOT_FINITE.format(
                path=run_dir, loss=loss.item(), epoch=epoch + 1, lr=f"{s.config.lr / 10:g}"
            )
        )


def _sampling_record(s: _Setup, weighted: EpochWeights) -> dict[str, Any]:
    """Summarise the epoch's draw weights: resampled or not, effective sample sizes."""
    weights = weighted.weights
    ess_fraction = effective_sample_size(weights) / len(weights)
    y_train = torch.from_numpy(s.data.y[s.train_idx])
    return {
        "resampled": weighted.resampled,
        "ess": ess_fraction * len(weights),
        "ess_fraction": ess_fraction,
        "ess_by_class": {
            name: effective_sample_size(weights[y_train == c]) / int((y_train == c).sum())
            for c, name in enumerate(s.data.classes)
            if (y_train == c).any()
        },
    }


def _validate(s: _Setup) -> dict[str, Any]:
    """Return the validation accuracy, overall and per group, and the selection scores."""
    if len(s.val_idx) == 0:
        return {"val_acc": None, "val_acc_by_group": None}
    mu, probs = encode(s.model, s.data.images, s.val_idx, device=s.device)
    y = s.data.y[s.val_idx]
    correct = probs.argmax(1).numpy() == y
    return {
        "val_acc": float(correct.mean()),
        "val_acc_by_group": group_accuracy(
            s.data.frame.iloc[s.val_idx], correct, s.data.group_columns
        ),
        **validation_scores(mu.numpy(), y, correct, s.config.seed),
    }


def _checkpoint(
    s: _Setup,
    weighting: Weighting,
    selection: EpochSelection,
    epoch: int,
    history: list[dict[str, Any]],
    run_dir: Path,
) -> None:
    """Save everything a resumed run needs, then the metrics file the checkpoint vouches for."""
    runfolder.save_checkpoint(
        run_dir / runfolder.CHECKPOINT,
        {
            "format": 1,
            "debias_version": debias.__version__,
            "epoch": epoch + 1,
            "classes": s.data.classes,
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict() if s.scaler.is_enabled() else None,
            "sampler_rng": s.sampler_rng.get_state(),
            "weighting": weighting.state_dict(),
            "selection": selection.state_dict(),
            "metrics": json.dumps(history),
        },
    )
    files.write_jsonl(run_dir / runfolder.METRICS, history)


def _repair_at_end(s: _Setup, labelled: GroupLabels, run_dir: Path) -> None:
    """Repair the kept model's last layer on the repairing half of the group-labelled faces.

    The checkpoint's weights (the last and the kept epoch's) become the repaired ones, and
    ``config.json`` records the repair for the model card; a repair that does not beat the layer
    as it was leaves the model as it was and says so there.
    """
    result = labelled.repair(s.model, s.data.classes)
    if result.repaired:
        s.model.load_state_dict(result.model.state_dict())
        state = runfolder.load_checkpoint(run_dir / runfolder.CHECKPOINT)
        state = runfolder.with_model_weights(state, s.model.state_dict())
        runfolder.save_checkpoint(run_dir / runfolder.CHECKPOINT, state)
    saved = runfolder.read_config(run_dir)
    saved["repair"] = result.card(str(s.config.group_labels))
    saved["repair"].update(groups=labelled.groups, chose_epoch=int(labelled.choose.sum()))
    files.write_json(run_dir / runfolder.CONFIG, saved)


def _write_samples(
    s: _Setup, last: EpochWeights | None, weighting: Weighting, run_dir: Path
) -> None:
    """Write ``samples.csv`` and ``density.pt`` from the final model.

    ``samples.csv``: each image's split, label, groups, latent log-density within its class and
    the sampling weight the last epoch actually drew by. ``density.pt``: one class-free density
    of the training images the VAE models — what audits and outlier scores compare new images
    against.
    """
    data, config = s.data, s.config
    frame = data.frame.drop(columns=["split"], errors="ignore").copy()
    frame.insert(2, "split", "")
    frame.loc[s.train_idx, "split"] = "train"
    frame.loc[s.val_idx, "split"] = "val"
    if last is None:  # a resumed run that had nothing left to train: the current weights
        last = weighting.epoch_weights(_epoch_view(s, config.epochs - 1))
    frame["sampling_weight"] = np.nan
    frame.loc[s.train_idx, "sampling_weight"] = last.weights.double().numpy()
    y = torch.from_numpy(data.y)
    mu_train, _ = encode(s.model, data.images, s.train_idx, device=s.device)
    by_class = methods.histogram_of(config).fit(mu_train, y[s.train_idx])
    frame["latent_log_density"] = np.nan
    frame.loc[s.train_idx, "latent_log_density"] = by_class.log_density_.numpy()
    if len(s.val_idx):
        mu_val, _ = encode(s.model, data.images, s.val_idx, device=s.device)
        frame.loc[s.val_idx, "latent_log_density"] = by_class.score_samples(
            mu_val, y[s.val_idx]
        ).numpy()
    modelled = s.class_mask[y[s.train_idx]] > 0
    runfolder.save_checkpoint(
        run_dir / runfolder.DENSITY, training_density(config, mu_train[modelled]).state()
    )
    files.write_csv(run_dir / runfolder.SAMPLES, frame)


def training_density(config: TrainConfig, mu: torch.Tensor) -> LatentHistogram:
    """Fit the class-free latent density of training faces ``mu`` ``(N, K)`` (``density.pt``)."""
    h = methods.histogram_of(config)
    return LatentHistogram(bins=h.bins, alpha=h.alpha, n_components=h.n_components).fit(mu)


def _write_config(s: _Setup, run_dir: Path, fingerprint: str | None) -> None:
    files.write_json(
        run_dir / runfolder.CONFIG,
        {
            "debias_version": debias.__version__,
            "train": methods.config_to_dict(s.config),
            "data": {
                "classes": s.data.classes,
                "layout": s.data.layout,
                "source": s.data.source,
                "group_columns": s.data.group_columns,
                "positive_class": s.positive,
                "n_train": len(s.train_idx),
                "n_val": len(s.val_idx),
                "n_skipped": len(s.data.skipped),
                "fingerprint": fingerprint,
            },
            "device": str(s.device),
            "processes": s.cluster.world,
        },
    )


# ---------------------------------------------------------------------------------------------
# Small pieces


def data_fingerprint(data: FaceData) -> str:
    """Hash the data's files (paths below its source, sizes) and labels.

    Resuming compares it, so a run never silently continues on other data; paths are relative
    so a moved data folder still matches.
    """
    source = Path(data.source)
    root = source if source.is_dir() else source.parent
    digest = hashlib.sha256()
    paths = [*data.frame["path"], *(path for path, _ in data.skipped)]
    labels = [*data.frame["label"].astype(str), *("" for _ in data.skipped)]
    for path, label in sorted(zip(paths, labels, strict=True)):
        try:
            name, size = str(Path(path).relative_to(root)), os.path.getsize(path)
        except (ValueError, OSError):
            name, size = str(path), -1
        digest.update(f"{name}\0{size}\0{label}\n".encode())
    return digest.hexdigest()


def split_indices(data: FaceData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices: the data set's own partition, else stratified by class.

    A partition without validation rows (train/ and test/ folders only) gets its validation
    split drawn from its training rows, as data without a partition does.
    """
    pool = np.arange(len(data.y))
    if "split" in data.frame.columns:
        split = data.frame["split"].to_numpy()
        pool = np.flatnonzero(split == "train")
        if (split == "val").any():
            return pool, np.flatnonzero(split == "val")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in range(len(data.classes)):
        members = rng.permutation(pool[data.y[pool] == c])
        n_val = int(round(val_fraction * len(members)))
        if val_fraction > 0 and len(members) > 1:
            n_val = max(n_val, 1)
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def vae_mask_for(config: TrainConfig, classes: list[str]) -> tuple[torch.Tensor, str | None]:
    """Per-class 1/0 mask of the classes the VAE models, and the positive class if there is one."""
    mode = config.vae_on
    positive = config.positive_class
    if mode == "auto":
        mode = "positive" if (positive is not None or "face" in classes) else "all"
    if mode == "all":
        return torch.ones(len(classes)), None
    positive = positive if positive is not None else named_positive(classes)
    if positive is None or positive not in classes:
        raise errors.ConfigError(errors.POSITIVE_CLASS.format(classes=", ".join(classes)))
    return torch.tensor([float(c == positive) for c in classes]), positive


def group_accuracy(
    frame: pd.DataFrame, correct: np.ndarray, columns: list[str]
) -> dict[str, dict[str, float]]:
    """Accuracy per value of each group column (empty values are not a group)."""
    out: dict[str, dict[str, float]] = {}
    for column in columns:
        values = frame[column].astype(str).to_numpy()
        out[column] = {
            v: float(correct[values == v].mean()) for v in sorted(set(values)) if v != ""
        }
    return out


def draw_epoch(
    weights: torch.Tensor, train_idx: np.ndarray, n: int, generator: torch.Generator
) -> np.ndarray:
    """Draw the epoch's weighted sample: ``n`` training rows, with replacement, by ``weights``.

    Every rank draws the same (same weights, same generator state); each trains on its block.
    """
    return train_idx[torch.multinomial(weights, n, replacement=True, generator=generator).numpy()]


def _accumulate(sums: dict[str, float], loss: Loss, logits: torch.Tensor, y: torch.Tensor) -> None:
    """Add one batch's sums of the loss terms (VAE terms over the samples it models)."""
    n = len(y)
    sums["loss"] += loss.total.item() * n
    sums["classification"] += loss.classification.sum().item()
    sums["reconstruction"] += (loss.reconstruction * loss.vae_mask).sum().item()
    sums["kl"] += (loss.kl * loss.vae_mask).sum().item()
    sums["correct"] += int((logits.argmax(1) == y).sum())
    sums["seen"] += n


def _lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    if schedule == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``--precision`` on ``device``; None trains in float32."""
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda":
        return torch.float16
    return None


def _cache_name(cluster: distributed.Cluster) -> str:
    # ranks decode on their own: one memory-mapped cache each, never one written by two
    return runfolder.CACHE if not cluster.distributed else f"cache-rank{cluster.rank}.npy"


def _epoch_generator(
    seed: int, epoch: int, rank: int, stream: int, device: torch.device
) -> torch.Generator:
    """Return a generator for one (epoch, rank, stream): repeatable, different across ranks."""
    state = np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(state) >> 1)
