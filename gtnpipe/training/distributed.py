"""Data-parallel training across processes started by `torchrun` (gloo on CPU, nccl on GPU).

Every function works unchanged in a plain single process (rank 0 of 1), so callers never
branch on whether they run distributed.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["average_buffers", "barrier", "broadcast_object", "init_from_env", "is_main", "rank", "world_size", "wrap"]


def init_from_env() -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise do nothing."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=60))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` when distributed (it broadcasts rank 0's weights
    and buffers, and averages gradients), else `model` itself."""
    if not dist.is_initialized():
        return model
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


@torch.no_grad()
def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BN running statistics) over ranks.

    DDP broadcasts rank 0's buffers before each forward, but the last forward of an epoch
    updates each rank's copy from its own shard: without this, ranks evaluate differently.
    """
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world_size())
