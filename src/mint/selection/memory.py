"""Memory of a selection: the peak bytes of each stage, estimated before any work, and the
refusal (with the options that help) when the estimate exceeds the caller's limit. The limit is
the caller's to choose: the engine never reads the machine's memory."""
from __future__ import annotations

import logging

import numpy as np

from mint.errors import MintError
from mint.selection.distances import DEFAULT_BLOCK

__all__ = ["estimate_memory", "estimate_strategies", "choose_strategy", "check_memory", "check_limit"]

logger = logging.getLogger(__name__)


def estimate_memory(n: int, d: int, *, n_pre: int, n_kinds: int, auto: bool, n_jobs: int, itemsize: int,
                    feature_itemsize: int = 4, block: int = DEFAULT_BLOCK) -> dict:
    """Peak bytes of each stage, beyond the caller's own feature arrays."""
    cast = 0 if itemsize == feature_itemsize else n * d * itemsize * n_kinds  # features cast to dtype
    blocks = (n_kinds + 3) * min(block, n) ** 2 * 8
    pre = 0
    if auto:
        pre = (2 + n_jobs) * n_pre * n_pre * itemsize + 2 * n_pre * d * itemsize + blocks
    full = n * n * itemsize + cast + blocks + 64 * n * 8
    # the faster variant for MINT: d_PT and d_IFL kept whole (the floor is computed once, the
    # combined matrix and every error are read from them), three N x N matrices
    cached = 3 * n * n * itemsize + cast + blocks + 64 * n * 8
    return {"pre_sample": pre, "full": full, "peak": max(pre, full), "cached_full": cached}


def check_memory(est: dict, limit_bytes: int | None, *, dtype, auto: bool, n: int) -> None:
    """Log the estimate; a `MintError` when its peak exceeds `limit_bytes` (None: no limit)."""
    gib = 1 << 30
    logger.info(
        "memory estimate: pre-sample stage %.2f GiB, full stage %.2f GiB (one %d x %d %s matrix), peak %.2f GiB",
        est["pre_sample"] / gib, est["full"] / gib, n, n, np.dtype(dtype).name, est["peak"] / gib,
    )
    if limit_bytes is None or est["peak"] <= limit_bytes:
        return
    hints = []
    if np.dtype(dtype) == np.float64:
        hints.append("use dtype float32 (`--dtype float32`), which halves every matrix")
    if auto and est["pre_sample"] >= est["full"]:
        hints.append("lower `--preheat_ratio` or use `--n_jobs 1`")
    hints.append("run on a machine with more memory, or raise the limit with `--max_memory_gb` if you know better")
    raise MintError(
        f"selection needs about {est['peak'] / gib:.1f} GiB but only {limit_bytes / gib:.1f} GiB is available; "
        + "; ".join(hints)
    )


def check_limit(memory_limit_bytes) -> int | None:
    """`memory_limit_bytes` as an int, or None for no limit."""
    if memory_limit_bytes is None:
        return None
    ok = isinstance(memory_limit_bytes, (int, np.integer)) and not isinstance(memory_limit_bytes, bool)
    if not ok or memory_limit_bytes < 0:
        raise MintError(f"memory_limit_bytes must be a whole number of bytes >= 0, or None for no limit; "
                        f"got {memory_limit_bytes!r}")
    return int(memory_limit_bytes)


def estimate_strategies(n: int, d: int, *, n_pre: int, n_kinds: int, auto: bool, n_jobs: int | None, itemsize: int,
                        block: int, partition_size: int) -> dict[str, dict]:
    """Peak memory of the exact engine on all N rows, and of the partitioned one (as many parts
    at once as it has workers; `workers` and `n_parts` are in its entry)."""
    from mint.selection.workers import resolve_jobs

    common = dict(n_pre=n_pre, n_kinds=n_kinds, auto=auto, n_jobs=resolve_jobs(n_jobs, 174), itemsize=itemsize,
                  block=block)
    exact = estimate_memory(n, d, **common)
    n_parts = max(1, -(-n // partition_size))
    workers = resolve_jobs(n_jobs, n_parts)
    part = estimate_memory(min(n, partition_size), d, **common)
    full = workers * part["full"]
    part = {**part, "full": full, "peak": max(part["pre_sample"], full), "cached_full": workers * part["cached_full"],
            "n_parts": n_parts, "workers": workers}
    return {"exact": exact, "partitioned": part}


def choose_strategy(strategy: str, n: int, est: dict, limit: int | None, partition_size: int) -> str:
    """exact | partitioned; `auto` takes exact while its estimate fits the limit (without a limit:
    while N <= partition_size) and logs why."""
    if strategy != "auto":
        return strategy
    gib = 1 << 30
    if limit is not None:
        chosen = "exact" if est["exact"]["peak"] <= limit else "partitioned"
        why = f"the exact engine needs about {est['exact']['peak'] / gib:.1f} GiB of the {limit / gib:.1f} GiB limit"
    else:
        chosen = "exact" if n <= partition_size else "partitioned"
        why = f"N = {n} {'<=' if chosen == 'exact' else '>'} partition_size {partition_size} (no memory limit given)"
    logger.info("selection strategy auto -> %s: %s", chosen, why)
    return chosen
