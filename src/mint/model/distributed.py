"""The process group of a `torchrun` job, for the steps that split their work over ranks (the
gradient features' shards, the parts of a partitioned selection). Started by torchrun, never by
mint: a process without WORLD_SIZE > 1 is rank 0 of 1 and imports nothing."""
from __future__ import annotations

import os

__all__ = ["process_group", "barrier"]


def process_group(backend: str | None = None):
    """(rank, world_size, torch.distributed or None). Initialises the group when the process was
    started by torchrun (WORLD_SIZE > 1): `backend`, else NCCL on GPUs and gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":  # one GPU per process: NCCL's collectives run on the current device
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # ranks wait for each other at the merge; shards and parts can take hours on big data sets
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size(), dist


def barrier(dist) -> None:
    if dist is not None:
        dist.barrier()
