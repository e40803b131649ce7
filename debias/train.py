"""Training: ``train(config)`` runs the DB-VAE (or the plain baseline) end to end into a run folder.

Each epoch: latent means of the training images under the current model -> per-class histograms
-> sampling weights -> an epoch of weighted batches -> validation -> metrics line -> checkpoint.
Devices live here and in ``debias.device``; the model and the resampler do not know about them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

import debias
from debias import distributed, errors
from debias import run as runio
from debias.augment import augment
from debias.config import TrainConfig
from debias.data import FaceData, load_data
from debias.data.manifest import check_groups
from debias.device import select_device
from debias.model import DBVAE, Loss, dbvae_loss, preprocess
from debias.resample import LatentHistogram, effective_sample_size

log = logging.getLogger(__name__)

EVAL_BATCH = 256  # inference batch for latent passes and validation
CHANNELS_LAST = torch.channels_last


class Listener(Protocol):
    """Progress events; the CLI draws them as progress bars. Every method is optional."""

    def phase(self, name: str, total: int) -> None:
        """Start a phase (decode, epoch N, ...) of ``total`` steps."""

    def advance(self, n: int = 1, **fields: float) -> None:
        """``n`` steps done; ``fields`` are running statistics (loss, acc, ess)."""

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        """Receive a finished epoch's ``metrics.jsonl`` record."""


class SilentListener:
    """A listener that shows nothing (library use, tests, benchmarks)."""

    def phase(self, name: str, total: int) -> None:  # noqa: D102
        pass

    def advance(self, n: int = 1, **fields: float) -> None:  # noqa: D102
        pass

    def epoch_end(self, metrics: dict[str, Any]) -> None:  # noqa: D102
        pass


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is and what it learned."""

    run_dir: Path
    model: DBVAE
    data: FaceData
    metrics: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------------
# Pieces of an epoch


def batches(
    images: np.ndarray, idx: np.ndarray, size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield ``(indices, uint8 images)`` in chunks of ``size``; sorted reads are cache-friendly."""
    for start in range(0, len(idx), size):
        chunk = idx[start : start + size]
        yield chunk, torch.from_numpy(np.ascontiguousarray(images[chunk]))


@torch.no_grad()
def compute_latents(
    model: DBVAE,
    images: np.ndarray,
    idx: np.ndarray,
    device: torch.device,
    on_advance: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means ``(N, K)`` and class probabilities ``(N, C)`` of ``images[idx]``, on the CPU.

    Uses :func:`debias.model.preprocess`, exactly as training does, and BatchNorm in eval mode;
    the model's previous mode is restored afterwards (leaving it in eval mode would silently
    train the rest of the run with frozen BatchNorm statistics). Images of another size than the
    model's are resized (antialiased) first, so any audited image set can be embedded.
    """
    was_training = model.training
    model.eval()
    try:
        mus, probs = [], []
        for _, x in batches(images, idx, EVAL_BATCH):
            x = preprocess(x.to(device), model.cfg.image_size)
            logits, mu, _ = model.encode(x)
            if on_advance is not None:
                on_advance(len(x))
            mus.append(mu.float().cpu())
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(mus), torch.cat(probs)
    finally:
        model.train(was_training)


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


def group_balanced_weights(frame: pd.DataFrame, columns: list[str], y: np.ndarray) -> torch.Tensor:
    """Weight every combination of ``columns`` equally within its class.

    Each class keeps its share of the data; rows with an empty group value form a cell of their own.
    """
    cell = frame[columns].astype(str).agg("|".join, axis=1).to_numpy()
    key = pd.Series(y.astype(str)) + "#" + pd.Series(cell)
    cell_size = key.map(key.value_counts()).to_numpy(np.float64)
    cells_per_class = pd.Series(key.unique()).str.split("#").str[0].value_counts()
    class_size = np.bincount(y).astype(np.float64)
    n_cells = pd.Series(y.astype(str)).map(cells_per_class).to_numpy(np.float64)
    w = class_size[y] / len(y) / n_cells / cell_size
    return torch.from_numpy(w / w.sum()).float()


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
    if positive is None:
        positive = next((c for c in ("face", "yes", "1") if c in classes), None)
    if positive is None or positive not in classes:
        raise errors.ConfigError(errors.POSITIVE_CLASS.format(classes=", ".join(classes)))
    return torch.tensor([float(c == positive) for c in classes]), positive


# ---------------------------------------------------------------------------------------------
# The run


def train(config: TrainConfig, *, listener: Listener | None = None) -> TrainResult:
    """Train a DB-VAE (or, with ``config.baseline``, the plain classifier) into a run folder.

    Parameters
    ----------
    config : TrainConfig
        What to train on and how. ``config.out`` is the run folder (default ``runs/<date-time>``).
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
    config.validate()
    if config.out is None and distributed.from_env().distributed:
        raise errors.ConfigError(
            "Training under torchrun needs a run folder every process agrees on. Pass --out RUN."
        )
    run_dir = Path(config.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    if (run_dir / runio.CHECKPOINT).exists():
        raise errors.RunError(
            f"{run_dir}: already holds a run. Pass --resume {run_dir} to continue it, "
            "or a new --out folder."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, out=str(run_dir))
    return _fit(config, run_dir, None, listener or SilentListener())


def resume(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    device: str | None = None,
    listener: Listener | None = None,
) -> TrainResult:
    """Continue an interrupted run from its last checkpoint; it ends as an uninterrupted run would.

    Parameters
    ----------
    run_dir : path-like
        The run folder.
    epochs : int, optional
        A new total number of epochs (to train further).
    device : str, optional
        Continue on another device.
    listener : Listener, optional
        Receives progress events.
    """
    run_dir = Path(run_dir)
    saved = runio.read_config(run_dir)
    config = TrainConfig.from_dict(saved["train"])
    if epochs is not None:
        config.epochs = epochs
    if device is not None:
        config.device = device
    config.validate()
    state = runio.load_checkpoint(run_dir / runio.CHECKPOINT)
    if state["epoch"] >= config.epochs:
        raise errors.RunError(errors.RUN_FINISHED.format(path=run_dir, epochs=config.epochs))
    return _fit(config, run_dir, state, listener or SilentListener())


def _fit(
    config: TrainConfig, run_dir: Path, state: dict[str, Any] | None, listener: Listener
) -> TrainResult:
    cluster = distributed.from_env()
    device = distributed.join(cluster, select_device(config.device))
    if not cluster.main:  # one progress display and one writer: rank 0
        listener = SilentListener()
    # The data are decoded first: the slowest step and the one most likely to fail on bad input.
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
            run_dir / runio.SKIPPED,
        )
    if cluster.main:
        skipped = pd.DataFrame(data.skipped, columns=["path", "reason"])
        runio.write_csv(run_dir / runio.SKIPPED, skipped)
    check_groups(data.frame, config.balance_groups or [])
    train_idx, val_idx = split_indices(data, config.val_fraction, config.seed)
    class_mask, positive = vae_mask_for(config, data.classes)

    with torch.random.fork_rng(devices=[]):  # seeds the initial weights, not the caller's RNG
        torch.manual_seed(config.seed)
        # channels_last: the layout oneDNN and cuDNN convolutions run fastest in
        model = DBVAE(len(data.classes), config.model).to(device, memory_format=CHANNELS_LAST)
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
    use_amp = amp_dtype is not None
    # float16 gradients underflow without loss scaling; bfloat16 has float32's range
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    # The epoch's draw: the same on every rank. Augmentation and the VAE's noise get generators
    # seeded per epoch and rank instead, so a resumed run repeats them without saving them.
    sampler_rng = torch.Generator().manual_seed(config.seed)
    start_epoch, history = 0, []
    if state is not None:
        if state["classes"] != data.classes:
            raise errors.RunError(
                f"{run_dir}: the data now has classes {data.classes}, the checkpoint "
                f"{state['classes']}. Resume with the data the run started with."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        sampler_rng.set_state(state["sampler_rng"])
        start_epoch, history = state["epoch"], json.loads(state["metrics"])
        # The checkpoint carries the metrics of its epochs: a kill just before or after the
        # metrics file was updated neither loses a line nor repeats one.
        if cluster.main:
            runio.write_jsonl(run_dir / runio.METRICS, history)

    if cluster.main:
        _write_config(config, run_dir, data, train_idx, val_idx, positive, device, cluster)
    trained = model
    if cluster.distributed:  # gradients averaged over the ranks at every step
        trained = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.baseline,  # the baseline's loss leaves out the decoder
        )
    y_train = torch.from_numpy(data.y[train_idx])
    all_modelled = bool((class_mask > 0).all())  # else decode only the images the VAE models
    class_mask_on_device = class_mask.to(device)  # once, not a host-to-device copy per step
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        distributed.sync_buffers(model, cluster)
        weights, resampled = _epoch_weights(
            config, epoch, model, data, train_idx, class_mask, device, cluster
        )
        ess_fraction = effective_sample_size(weights) / len(weights)
        draw = draw_epoch(weights, train_idx, share * cluster.world, sampler_rng)
        mine = draw[cluster.rank * share : (cluster.rank + 1) * share]
        augment_rng = _epoch_generator(config.seed, epoch, cluster.rank, 0, torch.device("cpu"))
        noise_rng = _epoch_generator(config.seed, epoch, cluster.rank, 1, device)
        listener.phase(f"epoch {epoch + 1}/{config.epochs}", steps_per_epoch)
        model.train()
        sums = {
            "loss": 0.0,
            "classification": 0.0,
            "reconstruction": 0.0,
            "kl": 0.0,
            "correct": 0,
            "seen": 0,
        }
        for chunk, x_u8 in batches(data.images, mine, config.batch_size):
            x = preprocess(x_u8.to(device, non_blocking=True))
            if config.augment:
                x = augment(x, augment_rng)
            x = x.contiguous(memory_format=CHANNELS_LAST)
            y = torch.from_numpy(data.y[chunk]).to(device)
            vae_mask = class_mask_on_device[y]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                out = trained(x, noise_rng, decode=None if all_modelled else vae_mask > 0)
            loss = dbvae_loss(
                out,
                x,
                y,
                vae_mask,
                kl_weight=config.kl_weight,
                recon=config.recon,
                use_vae=not config.baseline,
            )
            if not distributed.all_finite(loss.total, cluster):
                raise errors.DebiasError(
                    f"{run_dir}: the loss became {loss.total.item()} in epoch {epoch + 1}. "
                    f"The last good checkpoint is kept; lower --lr and run --resume {run_dir}."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss.total).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            _accumulate(sums, loss, out.logits, y)
            listener.advance(
                1, loss=loss.total.item(), acc=sums["correct"] / sums["seen"], ess=ess_fraction
            )
        seconds = time.perf_counter() - t0
        distributed.reduce_sums(sums, cluster, device)
        if not cluster.main:
            continue

        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({f"train_{k}": v / sums["seen"] for k, v in sums.items() if k != "seen"})
        record["train_acc"] = record.pop("train_correct")
        record.update(
            {
                "resampled": resampled,
                "ess": ess_fraction * len(weights),
                "ess_fraction": ess_fraction,
                "ess_by_class": {
                    name: effective_sample_size(weights[y_train == c]) / int((y_train == c).sum())
                    for c, name in enumerate(data.classes)
                    if (y_train == c).any()
                },
                "seconds": seconds,
                "images_per_s": len(draw) / seconds,
                "processes": cluster.world,
                "lr": scheduler.get_last_lr()[0],
            }
        )
        record.update(_validate(model, data, val_idx, device))
        history.append(record)
        runio.save_checkpoint(
            run_dir / runio.CHECKPOINT,
            {
                "format": 1,
                "debias_version": debias.__version__,
                "epoch": epoch + 1,
                "classes": data.classes,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "sampler_rng": sampler_rng.get_state(),
                "metrics": json.dumps(history),
            },
        )
        runio.write_jsonl(run_dir / runio.METRICS, history)
        listener.epoch_end(record)

    if cluster.main:
        _write_samples(model, data, train_idx, val_idx, config, class_mask, device, run_dir)
    (run_dir / _cache_name(cluster)).unlink(missing_ok=True)
    distributed.leave(cluster)
    return TrainResult(run_dir, model.eval(), data, history)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``--precision`` on ``device``; None trains in float32."""
    if precision == "bfloat16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda":
        return torch.float16
    return None


def _cache_name(cluster: distributed.Cluster) -> str:
    # ranks decode on their own: one memory-mapped cache each, never one written by two
    return runio.CACHE if not cluster.distributed else f"cache-rank{cluster.rank}.npy"


def _epoch_generator(
    seed: int, epoch: int, rank: int, stream: int, device: torch.device
) -> torch.Generator:
    """Return a generator for one (epoch, rank, stream): repeatable, different across ranks."""
    state = np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(state) >> 1)


def draw_epoch(
    weights: torch.Tensor, train_idx: np.ndarray, n: int, generator: torch.Generator
) -> np.ndarray:
    """Draw the epoch's weighted sample: ``n`` training rows, with replacement, by ``weights``.

    Every rank draws the same (same weights, same generator state); each trains on its block.
    """
    return train_idx[torch.multinomial(weights, n, replacement=True, generator=generator).numpy()]


def _write_config(
    config: TrainConfig,
    run_dir: Path,
    data: FaceData,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    positive: str | None,
    device: torch.device,
    cluster: distributed.Cluster,
) -> None:
    runio.write_json(
        run_dir / runio.CONFIG,
        {
            "debias_version": debias.__version__,
            "train": config.to_dict(),
            "data": {
                "classes": data.classes,
                "layout": data.layout,
                "source": data.source,
                "group_columns": data.group_columns,
                "positive_class": positive,
                "n_train": len(train_idx),
                "n_val": len(val_idx),
                "n_skipped": len(data.skipped),
            },
            "device": str(device),
            "processes": cluster.world,
        },
    )


def _epoch_weights(
    config: TrainConfig,
    epoch: int,
    model: DBVAE,
    data: FaceData,
    train_idx: np.ndarray,
    class_mask: torch.Tensor,
    device: torch.device,
    cluster: distributed.Cluster,
) -> tuple[torch.Tensor, bool]:
    """Return the epoch's sampling weights over ``train_idx`` and whether they are non-uniform.

    Each rank encodes its block of the modelled rows and the blocks are gathered, so every rank
    fits the same histograms.
    """
    if config.balance_groups:
        frame = data.frame.iloc[train_idx]
        return group_balanced_weights(frame, config.balance_groups, data.y[train_idx]), True
    if config.baseline or epoch < config.warmup_epochs:
        return torch.full((len(train_idx),), 1.0 / len(train_idx)), False
    y = torch.from_numpy(data.y[train_idx])
    modelled = class_mask[y] > 0
    if not modelled.any():
        return torch.full((len(train_idx),), 1.0 / len(train_idx)), False
    # Only the images the VAE models carry a density to debias by: skip the others' pass.
    rows = train_idx[modelled.numpy()]
    part = rows[distributed.block(len(rows), cluster)]
    mu = distributed.gather_blocks(
        compute_latents(model, data.images, part, device)[0], len(rows), cluster
    )
    return latent_weights(_histogram(config).fit(mu, y[modelled]), y, class_mask), True


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


def latent_weights(
    histogram: LatentHistogram, y: torch.Tensor, class_mask: torch.Tensor
) -> torch.Tensor:
    """Use the histogram's weights for classes the VAE models, uniform ones for the others.

    Latents of classes the VAE does not model (non-faces in detection) carry no density to
    debias by, so those classes are sampled uniformly, keeping their share. ``histogram`` was
    fitted on every row of ``y`` or only on the rows of modelled classes (in order); its
    per-class histograms are the same either way.
    """
    modelled = class_mask[y] > 0
    fitted = histogram.weights_
    if len(fitted) == len(y):
        fitted = fitted[modelled]
    weights = torch.full((len(y),), 1.0 / len(y), dtype=torch.float64)
    weights[modelled] = fitted / fitted.sum() * (int(modelled.sum()) / len(y))
    return weights.float()


def _histogram(config: TrainConfig) -> LatentHistogram:
    return LatentHistogram(
        bins=config.bins,
        alpha=config.alpha,
        combine=config.combine,
        ess_fraction=config.ess_fraction,
        n_components=config.density_components,
    )


def _validate(
    model: DBVAE, data: FaceData, val_idx: np.ndarray, device: torch.device
) -> dict[str, Any]:
    if len(val_idx) == 0:
        return {"val_acc": None, "val_acc_by_group": None}
    _, probs = compute_latents(model, data.images, val_idx, device)
    correct = probs.argmax(1).numpy() == data.y[val_idx]
    return {
        "val_acc": float(correct.mean()),
        "val_acc_by_group": group_accuracy(data.frame.iloc[val_idx], correct, data.group_columns),
    }


def _write_samples(
    model: DBVAE,
    data: FaceData,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig,
    class_mask: torch.Tensor,
    device: torch.device,
    run_dir: Path,
) -> None:
    """samples.csv: each image's split, label, groups, latent log-density and sampling weight."""
    frame = data.frame.drop(columns=["split"], errors="ignore").copy()
    frame.insert(2, "split", "")
    frame.loc[train_idx, "split"] = "train"
    frame.loc[val_idx, "split"] = "val"
    frame["latent_log_density"] = np.nan
    frame["sampling_weight"] = np.nan
    if not config.baseline:
        y = torch.from_numpy(data.y)
        mu_train, _ = compute_latents(model, data.images, train_idx, device)
        histogram = _histogram(config).fit(mu_train, y[train_idx])
        frame.loc[train_idx, "latent_log_density"] = histogram.log_density_.numpy()
        # One class-free density of the faces the VAE modelled: what audits and outlier scores
        # compare new images against.
        modelled = class_mask[y[train_idx]] > 0
        density = LatentHistogram(
            bins=config.bins, alpha=config.alpha, n_components=config.density_components
        ).fit(mu_train[modelled])
        runio.save_checkpoint(run_dir / runio.DENSITY, density.state())
        frame.loc[train_idx, "sampling_weight"] = latent_weights(
            histogram, y[train_idx], class_mask
        ).numpy()
        if len(val_idx):
            mu_val, _ = compute_latents(model, data.images, val_idx, device)
            frame.loc[val_idx, "latent_log_density"] = histogram.score_samples(
                mu_val, y[val_idx]
            ).numpy()
    else:
        frame.loc[train_idx, "sampling_weight"] = 1.0 / len(train_idx)
    runio.write_csv(run_dir / runio.SAMPLES, frame)
