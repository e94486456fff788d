"""The process group of a `torchrun` job, for the steps that split their work over ranks (the
gradient features' shards, the parts of a partitioned selection, data-parallel training, `mint
run`), and `run_alone`, a single-process run from inside the job. Started by torchrun, never by
mint: a process without WORLD_SIZE > 1 is rank 0 of 1 and imports nothing."""
from __future__ import annotations

import atexit
import os

from typing import Any, Callable

__all__ = ["process_group", "barrier", "run_alone"]


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
        atexit.register(_destroy_group)
    return dist.get_rank(), dist.get_world_size(), dist


def _destroy_group() -> None:
    """Tear the group down before the interpreter does: a process that exits with gloo's or NCCL's
    threads still running can abort ("terminate called without an active exception", SIGABRT)
    after its work is done, and torchrun then reports the whole job as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # exiting anyway; the exit status is the work's, not the teardown's
            pass


def barrier(dist) -> None:
    if dist is not None:
        dist.barrier()


# What torchrun sets for its workers: without them a process is a single-process run.
_TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


def run_alone(fn: Callable, *args: Any) -> None:
    """``fn(*args)`` in a fresh process outside the torchrun job (spawned without torchrun's
    environment), for a step whose result must not depend on the number of processes."""
    import multiprocessing

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k in _TORCHRUN_ENV or k.startswith("TORCHELASTIC_")}
    try:
        proc = multiprocessing.get_context("spawn").Process(target=_call_alone, args=(fn, _threads(), *args))
        proc.start()
    finally:
        os.environ.update(saved)
    proc.join()
    if proc.exitcode != 0:
        from mint.errors import MintError

        raise MintError(f"{getattr(fn, '__name__', fn)} failed in its own process (exit code {proc.exitcode}); "
                        "its error is printed above")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _call_alone(fn: Callable, threads: int, *args: Any) -> None:
    import logging as logging_

    import torch

    logging_.basicConfig(level=logging_.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)  # the parent's count: the same floating-point results
    fn(*args)
