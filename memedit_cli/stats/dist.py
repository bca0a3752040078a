"""torch.distributed helpers for the statistics: rank and world size, the device
collectives run on, all-reduce, broadcast, and agreeing on a flag."""

from __future__ import annotations

import torch


def dist_info() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def coll_device() -> torch.device:
    """Where collective tensors live: the current CUDA device under NCCL, else CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor) -> None:
    dev = coll_device()
    if t.device == dev:
        torch.distributed.all_reduce(t)
    else:
        buf = t.to(dev)
        torch.distributed.all_reduce(buf)
        t.copy_(buf)


def broadcast_object(obj, rank: int, world: int):
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def agree(flag: bool, rank: int, world: int) -> bool:
    """Rank 0's flag, on every rank (so all ranks checkpoint at the same row)."""
    if world == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.long, device=coll_device())
    torch.distributed.broadcast(t, 0)
    return bool(t.item())
