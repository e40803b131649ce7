"""Data-parallel training across processes started by ``torchrun``.

``torchrun`` (one machine or many) starts one process per device and sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` above 1 training joins the process group
(NCCL when the processes use GPUs, gloo on CPUs) and wraps the model in DistributedDataParallel.
Every rank decodes the same data and holds the same model, so the rest is bookkeeping:

- the latent pass is split into contiguous blocks, one per rank, and the means are gathered back
  in order, so every rank fits the same histograms and gets the same sampling weights;
- every rank draws the same weighted sample (same seed, same weights) and trains on its own
  contiguous block of it: the ranks' samples never overlap and together are the epoch's draw;
- rank 0 alone validates and writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Cluster:
    """Where this process stands among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process validates, writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1


def from_env() -> Cluster:
    """Read the cluster that ``torchrun`` describes in the environment (one process without)."""
    return Cluster(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def join(cluster: Cluster, device: torch.device) -> torch.device:
    """Join the process group: NCCL on GPUs (one per local rank), gloo on CPUs.

    Returns the device this process trains on (``cuda:LOCAL_RANK`` for CUDA).
    """
    if not cluster.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", cluster.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def leave(cluster: Cluster) -> None:
    """Wait for every rank, then leave the process group."""
    if cluster.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def block(n: int, cluster: Cluster) -> slice:
    """Return this rank's contiguous block of ``n`` rows (sizes differ by at most one)."""
    bounds = np.linspace(0, n, cluster.world + 1).round().astype(int)
    return slice(int(bounds[cluster.rank]), int(bounds[cluster.rank + 1]))


def gather_blocks(part: torch.Tensor, n: int, cluster: Cluster) -> torch.Tensor:
    """Concatenate every rank's :func:`block` of ``n`` rows, in order, on every rank."""
    if not cluster.distributed:
        return part
    blocks = [block(n, Cluster(r, cluster.world)) for r in range(cluster.world)]
    sizes = [b.stop - b.start for b in blocks]
    nccl = dist.get_backend() == "nccl"  # NCCL moves CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else part.device
    padded = torch.zeros((max(sizes), *part.shape[1:]), dtype=part.dtype, device=device)
    padded[: len(part)] = part.to(device)
    pieces = [torch.empty_like(padded) for _ in range(cluster.world)]
    dist.all_gather(pieces, padded)  # all_gather wants equal shapes: pad, then trim
    return torch.cat([p[:s] for p, s in zip(pieces, sizes, strict=True)]).to(part.device)


def broadcast(value: torch.Tensor, cluster: Cluster) -> torch.Tensor:
    """Return rank 0's ``value`` on every rank (same shape and dtype on every rank)."""
    if not cluster.distributed:
        return value
    nccl = dist.get_backend() == "nccl"  # NCCL moves CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else value.device
    moved = value.to(device).contiguous()
    dist.broadcast(moved, src=0)
    return moved.to(value.device)


def share(draws: int, cluster: Cluster) -> int:
    """Draws each rank trains on per epoch: every rank takes the same number of steps."""
    return -(-draws // cluster.world)


def reduce_sums(values: dict[str, float], cluster: Cluster, device: torch.device) -> None:
    """Sum each value over the ranks, in place (epoch totals of the loss terms)."""
    if cluster.distributed:
        total = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(total)
        values.update(zip(values, total.tolist(), strict=True))


def sync_buffers(model: nn.Module, cluster: Cluster) -> None:
    """Give every rank rank 0's BatchNorm statistics (DDP syncs them only at each forward)."""
    if cluster.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def all_finite(value: torch.Tensor, cluster: Cluster) -> bool:
    """Whether ``value`` is finite on every rank (so all ranks stop together, none hangs)."""
    finite = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
    if cluster.distributed:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())
