"""torch.distributed helpers (DDP launched by ``torchrun``; any backend, gloo on CPU).

The trainer wraps the model in ``DistributedDataParallel`` when a process group is initialized, all-reduces its
metrics, calls ``sampler.set_epoch`` and writes checkpoints/logs on rank 0 only. Use a
``DistributedSampler`` in the training loader so each rank sees its own shard.

What must agree across ranks is made to agree here: :func:`sync_buffers` gives every rank rank 0's BatchNorm
statistics before anything is evaluated (DDP broadcasts them only at the start of the next forward, so after the
last step each rank holds its own), :func:`all_reduce_sum` turns per-rank counts into one verdict, and
:func:`gather` collects each rank's own state (its random streams) for a checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["all_reduce_sum", "gather", "is_distributed", "rank", "sync_buffers", "world_size", "wrap_ddp"]


def is_distributed() -> bool:
    """True inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``model`` in DDP (``device_ids`` set for CUDA) when distributed, else return it unchanged."""
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" and device.index is not None else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over ranks (identity without a process group)."""
    if not is_distributed():
        return values
    t: Tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics...) to every rank (no-op without a process group).

    DDP does the same at the start of its next forward, so training is unchanged; evaluations, the CO guard's
    checks and checkpoints then see one model on every rank.
    """
    if not is_distributed():
        return
    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a process group); a collective call."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
