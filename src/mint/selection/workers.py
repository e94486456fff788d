"""Worker processes of the selection engine (the alpha scan, the parts of a partitioned
selection): forked, so they share the caller's arrays without copies, and bound to the caller's
life, so none outlives it (Ctrl-C, SIGTERM or SIGKILL of the parent)."""
from __future__ import annotations

import os
from typing import Callable

__all__ = ["in_workers", "resolve_jobs"]


def in_workers(fn: Callable, n_jobs: int, tasks: list, on_result: Callable) -> list:
    """`fn(task)` (a module-level function) for every task, in order, from forked worker processes that end with this
    process: on any exception here (Ctrl-C, or SIGTERM turned into one by the caller) the workers
    are stopped before it propagates, and a killed parent takes them along (`_watch_parent`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=mp.get_context("fork"), initializer=_watch_parent,
                               initargs=(os.getpid(),))
    out = []
    try:
        for fut in [pool.submit(fn, task) for task in tasks]:
            out.append(fut.result())
            on_result(out[-1])
    except BaseException:
        workers = list((getattr(pool, "_processes", None) or {}).values())  # no public handle on them
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.join(timeout=5)
        raise
    pool.shutdown(wait=True)
    return out


def _watch_parent(parent_pid: int) -> None:
    """Worker initializer: end when the parent ends, however it ends. On Linux the kernel sends
    SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG); elsewhere a thread polls the parent
    pid. SIGTERM gets its default action back (the parent's handler came along with fork)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not _parent_death_signal(signal.SIGKILL):
        import threading

        threading.Thread(target=_poll_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the above took effect
        os._exit(1)


def _parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux only)."""
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signum), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _poll_parent(parent_pid: int) -> None:
    import time

    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def resolve_jobs(n_jobs: int | None, n_tasks: int) -> int:
    if n_jobs is None:
        n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not hasattr(os, "fork"):
        n_jobs = 1  # the shared-memory pool needs fork; elsewhere run in process
    return max(1, min(int(n_jobs), n_tasks))
