"""Data-parallel training under ``torchrun``, which sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them everything here is a cheap no-op, so the trainer has one code path."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from nmt_cli.errors import NmtError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The process's place in a torchrun job, from its environment (rank 0 of 1 when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise NmtError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun") \
            from None
    return DistInfo(rank, world, local)


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group, if any; return the rank info and this rank's device."""
    info = env_info()
    if not info.enabled:
        return info, device
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise NmtError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} "
                           "CUDA devices are visible; use --nproc-per-node <= the GPU count")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Ranks other than 0 wait at a barrier while rank 0 validates; give that an hour.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=60))
    return info, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (float64, so token counts stay exact)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled in memory; only ever rank 0's own data)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` as a list on every rank (one element when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_share(batches: list[np.ndarray], info: DistInfo) -> list[np.ndarray]:
    """This rank's batches: every ``world_size``-th, cut to an equal count on every rank (one more
    would wait forever in the all-reduce); the few left over are skipped for this epoch."""
    per_rank = len(batches) // info.world_size
    if per_rank == 0:
        raise NmtError(f"the epoch has {len(batches)} batches, fewer than the {info.world_size} "
                       "ranks; lower train.batch_tokens or use fewer processes")
    return batches[info.rank::info.world_size][:per_rank]
