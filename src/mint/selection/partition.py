"""Partitioned facility location: selection beyond one dense N x N matrix.

The rows are split at random (seeded) into P parts of at most `partition_size` rows. Each part
runs the exact engine on its own rows (its own `S = max(D) - D`, lazy greedy, weights and
errors), so memory is bounded by the part, not by N, and parts run in parallel processes.

Budgets and the global order. Seats (subset elements) are handed to parts one at a time by the
Sainte-Lague rule (the next seat goes to the part with the largest `n_p / (2 s_p + 1)`, ties to
the smaller part index): every prefix of the seat sequence gives each part a budget within one
of `k * n_p / N`, and budgets only grow with k (the rule is house-monotone). Seat t takes the
next greedy pick of its part, so the subset of every ratio is a prefix of one global order and
each part's picks in it are a prefix of that part's greedy order.

Weights and errors (what they are). A row's weight goes to the nearest selected element *of its
own part* (combined distance, ties to the earlier pick), so weights sum to N; `E_PT` and `E_IFL`
sum each row's distance to the nearest selected element of its own part, an upper bound of the
exact errors over all selected elements. A part without any selected element (only when k < P)
sends its rows to the nearest selected element overall, computed block by block (N x k).

With one part (N <= partition_size) the rows keep their order and the result is the exact
engine's, bit for bit.

Second round (GreeDi, Mirzasoleiman et al. 2013; `second_round=True`). Each part picks up to
twice its budget at the largest subset size (`GREEDI_OVERSAMPLE`, at most its rows), and the
exact lazy greedy runs again with the union U of those picks as its candidates and every one of
the N rows as its ground set: the exact objective restricted to U, on one N x |U| matrix
(`S = max(D) - D`, the maximum taken over that matrix, D exactly 0 from a row to itself). Its one
greedy order gives every subset size (nested); weights go to each row's nearest selected element
*over all N rows* (combined distance, ties to the earlier pick) and E_PT / E_IFL are the exact
errors over all N. Memory: N x |U| similarities, refused with the numbers when over the limit.
"""
from __future__ import annotations

import heapq
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np

from mint.errors import MintError
from mint.selection.distances import DEFAULT_BLOCK, Combination, DistanceColumns, cross_distances, prefix_min_sums
from mint.selection.facility import lazy_greedy, prefix_weights, similarity_from_distance
from mint.selection.engine import resolve_engine, warm_up
from mint.selection.workers import in_workers

__all__ = ["DEFAULT_PARTITION_SIZE", "GREEDI_OVERSAMPLE", "second_round_bytes", "split_parts", "kmeans_parts", "seat_order", "PartResult", "part_fingerprint", "select_partitioned"]

logger = logging.getLogger(__name__)

# The second round's candidates: each part's first picks, up to this many times its budget.
GREEDI_OVERSAMPLE = 2

# Rows per part: a 20,000 x 20,000 float32 similarity is 1.6 GB, a few seconds of BLAS per kind
# at D = 1,024, and large enough that a part's picks cover its clusters well.
DEFAULT_PARTITION_SIZE = 20_000
PARTITION_SPAWN_KEY = (2,)  # the row shuffle's seed stream, apart from the pre-sample's and the baseline's


def split_parts(n: int, partition_size: int, seed: int) -> list[np.ndarray]:
    """Row indices of each part: one part `arange(n)` when it fits, else a seeded shuffle cut
    into `ceil(n / partition_size)` near-equal parts, each sorted (ties go to smaller indices)."""
    n_parts = max(1, math.ceil(n / partition_size))
    if n_parts == 1:
        return [np.arange(n, dtype=np.int64)]
    perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=PARTITION_SPAWN_KEY)).permutation(n)
    return [np.sort(p).astype(np.int64) for p in np.array_split(perm, n_parts)]


KMEANS_SPAWN_KEY = (3,)  # k-means' sample and initial centres
KMEANS_SAMPLE = 20_000  # rows the centres are fitted on (every row is then assigned)
KMEANS_ITERS = 10


def _kmeans_space(features: Mapping[str, Any], combination: Combination, rows: np.ndarray) -> np.ndarray:
    """The rows in one space for clustering: each kind's features scaled by its weight in the
    combined distance (1/factor or factor), side by side, float32."""
    blocks = []
    for kind, factor in zip(combination.kinds, combination.factors):
        scale = 1.0 / factor if combination.divide else factor
        blocks.append(np.asarray(features[kind][rows], dtype=np.float32) * np.float32(scale))
    return np.concatenate(blocks, axis=1)


def _nearest_centre(X: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (centres * centres).sum(axis=1)[None, :] - 2 * (X @ centres.T)  # |x|^2 is the same for every centre
    return np.argmin(d, axis=1)


def kmeans_parts(features: Mapping[str, Any], combination: Combination, n: int, partition_size: int, seed: int,
                 block: int = 8192) -> list[np.ndarray]:
    """Parts by k-means: `ceil(n / partition_size)` centres fitted (k-means++ start, Lloyd
    iterations) on a seeded sample of at most 20,000 rows, every row assigned to its nearest
    centre block by block, and a cluster larger than `partition_size` cut at random (seeded) into
    near-equal parts that fit. One part `arange(n)` when everything fits."""
    n_parts = max(1, math.ceil(n / partition_size))
    if n_parts == 1:
        return [np.arange(n, dtype=np.int64)]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=KMEANS_SPAWN_KEY))
    sample = np.sort(rng.choice(n, min(n, KMEANS_SAMPLE), replace=False))
    X = _kmeans_space(features, combination, sample)
    centres = X[[int(rng.integers(len(X)))]]
    closest = ((X - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, n_parts):  # k-means++: the next centre drawn in proportion to the squared distance
        pick = int(rng.choice(len(X), p=closest / closest.sum())) if closest.sum() > 0 else int(rng.integers(len(X)))
        centres = np.vstack([centres, X[pick]])
        closest = np.minimum(closest, ((X - X[pick]) ** 2).sum(axis=1))
    for _ in range(KMEANS_ITERS):
        label = _nearest_centre(X, centres)
        for c in range(n_parts):
            members = X[label == c]
            if len(members):
                centres[c] = members.mean(axis=0)
    label = np.empty(n, dtype=np.int64)
    for s in range(0, n, block):
        rows = np.arange(s, min(s + block, n))
        label[s:s + len(rows)] = _nearest_centre(_kmeans_space(features, combination, rows), centres)
    parts = []
    for c in range(n_parts):
        members = np.flatnonzero(label == c)
        if len(members) > partition_size:
            pieces = np.array_split(rng.permutation(members), math.ceil(len(members) / partition_size))
            parts += [np.sort(p).astype(np.int64) for p in pieces]
        elif len(members):
            parts.append(members.astype(np.int64))
    return parts


def seat_order(sizes: list[int], k: int) -> np.ndarray:
    """The part of each of the first k seats (Sainte-Lague; see the module docstring)."""
    seats = [0] * len(sizes)
    heap = [(-float(s), p) for p, s in enumerate(sizes)]  # quotient n_p / (2 * 0 + 1)
    heapq.heapify(heap)
    out = np.empty(k, dtype=np.int64)
    for t in range(k):
        while True:
            _, p = heapq.heappop(heap)
            if seats[p] < sizes[p]:
                break  # a full part takes no more seats (and is not pushed back)
        out[t] = p
        seats[p] += 1
        if seats[p] < sizes[p]:
            heapq.heappush(heap, (-sizes[p] / (2 * seats[p] + 1), p))
    return out


@dataclass(frozen=True)
class PartResult:
    order: np.ndarray  # global row indices, the part's greedy order
    gains: np.ndarray
    weights: dict  # count m -> weights of order[:m] over the part's rows
    errors: dict  # kind -> {m: within-part E_K of order[:m]}


def _select_part(features: Mapping[str, Any], rows: np.ndarray, counts: list[int], *, plan, alpha,
                 run_exact: Callable, compute_errors: bool) -> PartResult:
    """The exact engine on one part's rows, for its subset sizes `counts` (all >= 1)."""
    part = {kind: np.asarray(X[rows]) for kind, X in features.items() if X is not None}
    sub_plan = replace(plan, n=len(rows), ks={m: m for m in counts})
    order, gains, weights, errors = run_exact(part, sub_plan, alpha, compute_errors=compute_errors)
    return PartResult(rows[order], gains, weights, errors)


_SHARED: dict = {}  # set before the pool forks, read-only in the workers


def _worker(p: int) -> tuple[int, PartResult]:
    s = _SHARED
    return p, _select_part(s["features"], s["parts"][p], s["counts"][p], plan=s["plan"], alpha=s["alpha"],
                           run_exact=s["run_exact"], compute_errors=s["compute_errors"])


def part_fingerprint(rows: np.ndarray, counts: list[int], plan, alpha, compute_errors: bool) -> str:
    """What determines a part's result: its rows, subset sizes and the selection settings."""
    import hashlib
    import json

    h = hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    h.update(json.dumps({"counts": counts, "method": plan.method, "alpha": alpha,
                         "coef": list(plan.coef) if plan.coef is not None else None, "dtype": plan.dtype.name,
                         "errors": compute_errors}, sort_keys=True).encode())
    return h.hexdigest()


def _run_parts(features, parts, counts, *, plan, alpha, run_exact, compute_errors, n_jobs: int,
               progress: bool, part_cache=None) -> dict[int, PartResult]:
    """Every part with a budget, in worker processes when n_jobs > 1. `part_cache` (optional,
    the caller's: `.get(p, fingerprint)` / `.put(p, fingerprint, PartResult)`) keeps finished
    parts, so an interrupted selection resumes at the part where it stopped. A cache shared by
    several processes (torchrun ranks) may also offer `.mine(p)` (whether this process computes
    part p) and `.sync()` (wait until every process has put its parts); the others' parts are
    then read from it."""
    todo = [p for p in range(len(parts)) if counts[p]]
    prints = {p: part_fingerprint(parts[p], counts[p], plan, alpha, compute_errors) for p in todo}
    results: dict[int, PartResult] = {}
    if part_cache is not None:
        for p in todo:
            found = part_cache.get(p, prints[p])
            if found is not None:
                results[p] = found
        if results:
            logger.info("partitioned selection: %d of %d parts already done", len(results), len(todo))
    everything = todo
    mine = getattr(part_cache, "mine", None)
    todo = [p for p in todo if p not in results and (mine is None or mine(p))]
    if mine is not None:
        logger.info("partitioned selection: computing %d of the %d parts in this process", len(todo), len(everything))

    def done(p: int, res: PartResult) -> None:
        results[p] = res
        if part_cache is not None:
            part_cache.put(p, prints[p], res)
        if bar is not None:
            bar.update()

    bar = None
    if progress and len(todo) > 1:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="parts", unit="part", leave=False)
    if n_jobs > 1 and len(todo) > 1 and hasattr(os, "fork"):
        if resolve_engine(plan.engine, max(len(parts[p]) for p in todo)) == "numba":
            warm_up(plan.dtype)  # compiled once here, inherited by the forked workers
        _SHARED.update(features=features, parts=parts, counts=counts, plan=plan, alpha=alpha, run_exact=run_exact,
                       compute_errors=compute_errors)
        try:
            in_workers(_worker, min(n_jobs, len(todo)), todo, on_result=lambda item: done(*item))
        finally:
            _SHARED.clear()
    else:
        for p in todo:
            done(p, _select_part(features, parts[p], counts[p], plan=plan, alpha=alpha, run_exact=run_exact,
                                 compute_errors=compute_errors))
    if bar is not None:
        bar.close()
    if hasattr(part_cache, "sync"):
        _read_after_sync(part_cache, {p: prints[p] for p in everything}, results,
                         lambda p: f"part {p} of the partitioned selection")
    return results


def _read_after_sync(part_cache, prints: dict[int, str], results: dict[int, PartResult],
                     what: Callable[[int], str]) -> None:
    """Wait until every process sharing `part_cache` has put its slots, then read into `results`
    the slots of `prints` this process did not compute; a slot still missing is an error."""
    part_cache.sync()
    for p, fingerprint in prints.items():
        if p not in results:
            results[p] = part_cache.get(p, fingerprint)
            if results[p] is None:
                raise MintError(f"{what(p)} is missing from the shared part store after every process finished; "
                                "run the same command again")


def _nearest_overall(features, rows: np.ndarray, selected: np.ndarray, combination: Combination, dtype,
                     block: int) -> tuple[np.ndarray, dict[str, float]]:
    """For rows of a part with no selected element: the position in `selected` of each row's nearest
    element (combined distance) and the rows' distance sums to their nearest element per kind."""
    cols = {kind: np.asarray(features[kind][selected]) for kind in set(combination.kinds) | {"pt", "ifl"}
            if kind in features and features[kind] is not None}
    owner = np.empty(len(rows), dtype=np.int64)
    sums = {kind: 0.0 for kind in ("pt", "ifl") if kind in cols}
    for s in range(0, len(rows), block):
        chunk = rows[s:s + block]
        d = {kind: cross_distances(np.asarray(features[kind][chunk]), Y, dtype=dtype, block=block)
             for kind, Y in cols.items()}
        owner[s:s + block] = np.argmin(combination.apply({k: d[k] for k in combination.kinds}), axis=1)
        for kind in sums:
            sums[kind] += float(d[kind].min(axis=1).sum(dtype=np.float64))
    return owner, sums


def select_partitioned(features: Mapping[str, Any], plan, alpha: float | None, combination: Combination, *,
                       partition_size: int, run_exact: Callable, n_jobs: int, compute_errors: bool,
                       block: int = DEFAULT_BLOCK, progress: bool = True, part_cache=None,
                       partition: str = "random", second_round: bool = False,
                       memory_limit_bytes: int | None = None):
    """(order, gains, weights {k: ...}, errors {kind: {k: ...}}, n_parts) for the subset sizes of
    `plan`. partition: random (`split_parts`) or kmeans (`kmeans_parts`, on the combined distance's
    features). second_round: GreeDi over the union of the parts' picks (the module docstring);
    refused when its N x |U| matrix would exceed `memory_limit_bytes`."""
    if partition == "kmeans":
        parts = kmeans_parts(features, combination, plan.n, partition_size, plan.seed)
    else:
        parts = split_parts(plan.n, partition_size, plan.seed)
    seats = seat_order([len(p) for p in parts], plan.k_max)
    sizes = plan.sizes
    # per part, its budget at every subset size: the seats among the first k
    budgets = {k: np.bincount(seats[:k], minlength=len(parts)) for k in sizes}
    counts = [sorted({int(budgets[k][p]) for k in sizes} - {0}) for p in range(len(parts))]
    if second_round and len(parts) == 1:
        logger.info("partitioned selection: one part, which is the exact selection; no second round")
        second_round = False
    if second_round:
        top = budgets[plan.k_max]
        counts = [[int(min(len(parts[p]), GREEDI_OVERSAMPLE * top[p]))] if top[p] else [] for p in range(len(parts))]
        need = second_round_bytes(plan.n, sum(c[0] for c in counts if c), plan.dtype.itemsize, block)
        _check_second_round(need, memory_limit_bytes, plan.n, sum(c[0] for c in counts if c))
    logger.info("partitioned selection: %d parts of about %d rows, %d worker(s)%s", len(parts),
                round(plan.n / len(parts)), max(1, min(n_jobs, len(parts))),
                ", then a second round (GreeDi)" if second_round else "")
    results = _run_parts(features, parts, counts, plan=plan, alpha=alpha, run_exact=run_exact,
                         compute_errors=compute_errors and not second_round, n_jobs=n_jobs, progress=progress,
                         part_cache=part_cache)
    if second_round:
        union = np.sort(np.concatenate([results[p].order for p in results]))
        res = _shared_second_round(features, union, plan, alpha, combination, block=block,
                                   compute_errors=compute_errors, part_cache=part_cache, slot=len(parts))
        return res.order, res.gains, res.weights, res.errors, len(parts)
    taken = np.zeros(len(parts), dtype=np.int64)
    order = np.empty(plan.k_max, dtype=np.int64)
    gains = np.empty(plan.k_max, dtype=np.float64)
    position = np.empty(plan.k_max, dtype=np.int64)  # each pick's position within its part's order
    for t, p in enumerate(seats):
        j = taken[p]
        order[t], gains[t], position[t] = results[p].order[j], results[p].gains[j], j
        taken[p] += 1
    weights, errors = {}, {"pt": {}, "ifl": {}}
    for k in sizes:
        weights[k], errs = _assemble(features, parts, results, seats[:k], position[:k], order[:k], budgets[k],
                                     combination, plan.dtype, block, compute_errors)
        for kind, value in errs.items():
            errors[kind][k] = value
    return order, gains, weights, {kind: e for kind, e in errors.items() if e}, len(parts)


def _assemble(features, parts, results, seats, position, order, budget, combination, dtype, block,
              compute_errors) -> tuple[np.ndarray, dict[str, float]]:
    """Weights of `order` (one subset size) from the parts' own weights, and the errors."""
    w = np.zeros(len(order), dtype=np.float64)
    errs: dict[str, float] = {}
    for p, m in enumerate(budget):
        if m:
            mine = seats == p
            w[mine] = results[p].weights[int(m)][position[mine]]
            for kind, by_count in results[p].errors.items():
                errs[kind] = errs.get(kind, 0.0) + by_count[int(m)]
        else:
            owner, sums = _nearest_overall(features, parts[p], order, combination, dtype, block)
            w += np.bincount(owner, minlength=len(order))
            for kind, value in sums.items():
                errs[kind] = errs.get(kind, 0.0) + value
    return w, (errs if compute_errors else {})


# ----------------------------------------------------------------------------- second round (GreeDi)


def second_round_bytes(n: int, n_candidates: int, itemsize: int, block: int = DEFAULT_BLOCK) -> int:
    """Peak bytes of the second round beyond the features: the N x |U| similarity matrix, the
    per-kind distance blocks that build it, and the error pass's N x block columns."""
    return n * n_candidates * itemsize + 4 * min(block, n) * n_candidates * 8 + 2 * n * min(block, n) * 8 + 64 * n * 8


def _size(b: int) -> str:
    return f"{b / (1 << 30):.1f} GiB" if b >= 1 << 28 else f"{b / (1 << 20):.1f} MiB"


def _check_second_round(need: int, limit: int | None, n: int, n_candidates: int) -> None:
    logger.info("second round: %d candidates over %d rows, about %s", n_candidates, n, _size(need))
    if limit is not None and need > limit:
        raise MintError(
            f"the second round (GreeDi) needs about {_size(need)} (one {n} x {n_candidates} matrix: every row "
            f"against the parts' {n_candidates} picks) but the limit is {_size(limit)}; turn it off "
            "(`selection.second_round: false`, `mint select` without `--second_round`), select smaller ratios, or "
            "raise the limit with `--max_memory_gb` if you know better")


def second_round_similarity(features: Mapping[str, Any], candidates: np.ndarray, combination: Combination, *,
                            dtype, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """Candidate-major `C[c, i] = max(D) - D(i, candidates[c])` over all N rows i (combined
    distance, exactly 0 from a row to itself), built `block` rows at a time. (|U|, N), C-contiguous."""
    n = next(features[k] for k in combination.kinds).shape[0]
    cols = {k: np.asarray(features[k][candidates], dtype=dtype) for k in combination.kinds}
    C = np.empty((len(candidates), n), dtype=dtype)
    for s in range(0, n, block):
        e = min(s + block, n)
        d = {k: cross_distances(Y, np.asarray(features[k][s:e]), dtype=dtype, block=block) for k, Y in cols.items()}
        inside = np.flatnonzero((candidates >= s) & (candidates < e))
        for blk in d.values():
            blk[inside, candidates[inside] - s] = 0
        combination.apply(d, out=C[:, s:e])
    return similarity_from_distance(C, out=C)


def _shared_second_round(features, union: np.ndarray, plan, alpha, combination: Combination, *, block: int,
                         compute_errors: bool, part_cache, slot: int) -> PartResult:
    """The second round, computed once: kept in `part_cache` (slot `slot`, after the parts) like a
    part, so a rerun reads it back, and where the cache is shared by several processes (`.mine`,
    `.sync`: torchrun ranks) only the process that owns the slot computes it (one N x |U| matrix
    on the node, not one per rank) and the others read its result after the sync."""
    import hashlib

    fingerprint = hashlib.sha256(
        b"greedi:" + part_fingerprint(union, sorted(plan.sizes), plan, alpha, compute_errors).encode()).hexdigest()
    results: dict[int, PartResult] = {}
    found = part_cache.get(slot, fingerprint) if part_cache is not None else None
    mine = getattr(part_cache, "mine", None)
    owner = mine is None or mine(slot)
    if not owner:  # said whether or not the owner has already stored it when this process looks
        logger.info("second round: computed by another process")
    if found is not None:
        results[slot] = found
    elif owner:
        results[slot] = PartResult(*second_round_select(features, union, plan, combination, block=block,
                                                        compute_errors=compute_errors))
        if part_cache is not None:
            part_cache.put(slot, fingerprint, results[slot])
    if hasattr(part_cache, "sync"):
        _read_after_sync(part_cache, {slot: fingerprint}, results, lambda _: "the second round (GreeDi)")
    return results[slot]


def second_round_select(features: Mapping[str, Any], candidates: np.ndarray, plan, combination: Combination, *,
                        block: int = DEFAULT_BLOCK, compute_errors: bool = True):
    """The exact lazy greedy with `candidates` (sorted global rows) as its only candidates and all
    N rows as the ground set: (order (global rows), gains, weights {k}, errors {kind: {k}})."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if len(candidates) < plan.k_max:
        raise MintError(f"the second round has {len(candidates)} candidates for a subset of {plan.k_max}")
    t0 = time.perf_counter()
    C = second_round_similarity(features, candidates, combination, dtype=plan.dtype, block=block)
    t1 = time.perf_counter()
    pos, gains = lazy_greedy(C.T, plan.k_max, nonnegative=True, engine=plan.engine)
    weights = prefix_weights(C.T, pos, plan.sizes, engine=plan.engine)
    del C
    t2 = time.perf_counter()
    order = candidates[pos]
    errors = {}
    if compute_errors:
        for kind in ("pt", "ifl"):
            if kind in features and features[kind] is not None:
                source = DistanceColumns.from_features(features[kind], dtype=plan.dtype, block=block)
                errors[kind] = prefix_min_sums(source, order, plan.sizes)
    logger.info("second round: similarities %.1f s, greedy and weights %.1f s, errors on all rows %.1f s",
                t1 - t0, t2 - t1, time.perf_counter() - t2)
    return order, gains, weights, errors
