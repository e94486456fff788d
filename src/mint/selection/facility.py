"""Facility location `F(T) = sum_i max_{j in T} S(i, j)`, maximised greedily.

The *function* (gains of candidates given the current coverage) is kept apart from the
*optimiser* (naive or lazy greedy), after apricot. Conventions that make lazy greedy return
exactly the naive order:

- gains are accumulated in float64 by one function, `row_gains`, used by both optimisers;
  each candidate's gain is a sum over its own contiguous row, so it does not depend on which
  other candidates are evaluated with it. The summation order is fixed by `lane_sums` (32
  lanes, each summed left to right, then combined as a fixed tree), the same in the numpy and
  the compiled engine, and chosen because it vectorises (`GAIN_SUM`, recorded in every
  selection's settings);
- exact ties go to the smaller index (naive: `argmax`; lazy: heap entries `(-gain, index)`);
- stale gains are upper bounds: coverage only grows and float rounding is monotone, so a
  re-evaluated gain is never larger than its stale value, even in floating point.

Matrices are indexed `S[i, j]` = similarity of example i to candidate j. The greedy reads
candidate j's column as a row, so it works on `C = S.T`; pass `symmetric=True` when S is
symmetric (all matrices built by `mint.selection.distances` are) to skip that copy. Every index,
element 0 included, is an ordinary candidate. S may be rectangular (N examples x M candidates,
the second round of `mint.selection.partition`); pass it as `C.T` of a C-contiguous
candidate-major C and no copy is made.

`engine`: `lazy_greedy` and `prefix_weights` run as compiled kernels (`mint.selection.engine`,
numba) or in numpy, with the same bytes; `naive_greedy` and `row_gains` stay numpy, the reference.
"""
from __future__ import annotations

import heapq
import logging

import numpy as np

from mint.selection.engine import kernels, resolve_engine

__all__ = [
    "similarity_from_distance",
    "GAIN_SUM",
    "lane_sums",
    "row_gains",
    "naive_greedy",
    "lazy_greedy",
    "prefix_weights",
    "nearest_weights",
    "facility_value",
]

logger = logging.getLogger(__name__)

# Elements per float64 temporary when evaluating gains (32 MB): bounds the working set at any N.
_CHUNK_ELEMS = 1 << 22


def similarity_from_distance(D: np.ndarray, *, out: np.ndarray | None = None, top: float | None = None) -> np.ndarray:
    """`S = max(D) - D` over the whole matrix (so S >= 0 and S(i, i) = max(D)). In place when
    `out is D`. `top`: max(D) when the caller already has it (`distances.combine_matrices`
    returns it), which saves a pass over D."""
    top = D.max() if top is None else D.dtype.type(top)
    if out is None:
        return top - D
    np.subtract(top, D, out=out)
    return out


# The gain summation order (see `lane_sums`); a change of it changes selections on near-ties, so
# it is versioned and recorded in each selection's settings (and so in `mint select`'s run key).
GAIN_SUM = "lanes32"
LANES = 32


def lane_sums(T: np.ndarray) -> np.ndarray:
    """Float64 sum of each row of T (m, n), in a fixed order that vectorises: value i goes to lane
    i % 32, each lane is summed left to right (its first value plus the next, ...), and the 32
    lane totals are combined as `r_j = ((a_j + a_{j+8}) + a_{j+16}) + a_{j+24}` for j < 8, then
    `((r_0 + r_1) + (r_2 + r_3)) + ((r_4 + r_5) + (r_6 + r_7))`. float32 values are cast exactly.
    `mint.selection._compiled` sums in the same order (tests/selection/test_compiled.py)."""
    m, n = T.shape
    full = n - n % LANES
    if full:
        # a reduction over a middle axis adds its slices in order (checked against a plain loop)
        acc = T[:, :full].reshape(m, full // LANES, LANES).sum(axis=1, dtype=np.float64)
    else:
        acc = np.zeros((m, LANES), dtype=np.float64)
    if n > full:
        acc[:, : n - full] += T[:, full:]
    r = acc[:, 0:8] + acc[:, 8:16]
    r += acc[:, 16:24]
    r += acc[:, 24:32]
    return ((r[:, 0] + r[:, 1]) + (r[:, 2] + r[:, 3])) + ((r[:, 4] + r[:, 5]) + (r[:, 6] + r[:, 7]))


def row_gains(C: np.ndarray, rows: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Gain of each candidate in `rows` given coverage `cur` ((N,), the dtype of C):
    `sum_i max(C[j, i] - cur[i], 0)`, the terms in C's dtype, accumulated in float64 (`lane_sums`).

    Rounding of the subtraction is monotone, so a gain can only shrink as `cur` grows: stale
    gains stay exact upper bounds, which lazy greedy needs."""
    rows = np.asarray(rows, dtype=np.int64)
    n = C.shape[1]
    step = max(1, _CHUNK_ELEMS // max(n, 1))
    out = np.empty(len(rows), dtype=np.float64)
    for s in range(0, len(rows), step):
        block = C[rows[s : s + step]]
        # max(c, cur) - cur is bitwise max(c - cur, 0) (max is exact; a rounded difference of
        # c > cur is never negative) and is a little faster than subtracting first
        np.maximum(block, cur, out=block)
        block -= cur
        out[s : s + step] = lane_sums(block)
    return out


def _candidate_major(S: np.ndarray, symmetric: bool) -> np.ndarray:
    S = np.asarray(S)
    if S.dtype.kind != "f":
        S = S.astype(np.float64)
    if S.ndim != 2 or (symmetric and S.shape[0] != S.shape[1]):
        raise ValueError(f"similarity must be a {'square ' if symmetric else ''}matrix, got shape {S.shape}")
    return S if symmetric else np.ascontiguousarray(S.T)


def naive_greedy(S: np.ndarray, k: int, *, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Plain greedy, the reference: evaluate every remaining candidate at every step.
    Returns (order int64 (k,), gains float64 (k,))."""
    C = _candidate_major(S, symmetric)
    m, n = C.shape  # candidates, examples
    k = int(min(k, m))
    cur = np.zeros(n, dtype=C.dtype)
    chosen = np.zeros(m, dtype=bool)
    order = np.empty(k, dtype=np.int64)
    gains = np.empty(k, dtype=np.float64)
    everyone = np.arange(m)
    for t in range(k):
        g = row_gains(C, everyone, cur)
        g[chosen] = -np.inf
        j = int(np.argmax(g))  # first maximum: ties go to the smaller index
        order[t], gains[t] = j, g[j]
        chosen[j] = True
        np.maximum(cur, C[j], out=cur)
    return order, gains


def _first_gains(C: np.ndarray, nonnegative: bool) -> np.ndarray:
    """Gains with nothing selected. For S >= 0 every term max(c, 0) - 0 is c itself, so the
    plain row sums are bitwise what `row_gains` returns, without its gather and two passes."""
    m, n = C.shape
    if not nonnegative:
        return row_gains(C, np.arange(m), np.zeros(n, dtype=C.dtype))
    step = max(1, _CHUNK_ELEMS // max(n, 1))
    return np.concatenate([lane_sums(C[s : s + step]) for s in range(0, m, step)])


def _compiled(C: np.ndarray, engine: str) -> bool:
    """Whether the compiled kernels run on C (float32 and float64 only; numba has no float16)."""
    return C.dtype in (np.float32, np.float64) and resolve_engine(engine, C.shape[0]) == "numba"


def lazy_greedy(
    S: np.ndarray, k: int, *, symmetric: bool = False, nonnegative: bool = False, max_batch: int = 64,
    engine: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy with the same result as `naive_greedy`, bit for bit.

    A heap holds `(-upper_bound, index, step_evaluated)`. Each step pops candidates in rounds of
    1, 2, 4, ... (up to `max_batch`), re-evaluates each round in one vectorised call, pushes
    them back, and stops as soon as the heap's top was evaluated in this step: its gain is then
    at least every other candidate's upper bound (ties to the smaller index by tuple order).
    `nonnegative=True` promises S >= 0 (true of `max(D) - D`) and skips work in the first step.
    The compiled engine pops one candidate at a time (a pop costs no Python step there) and
    ignores `max_batch`; it returns the same order and gains."""
    C = _candidate_major(S, symmetric)
    m, n = C.shape  # candidates, examples
    k = int(min(k, m))
    order = np.empty(k, dtype=np.int64)
    gains = np.empty(k, dtype=np.float64)
    if k == 0:
        return order, gains
    if _compiled(C, engine):
        return kernels(C.dtype).lazy_greedy(np.ascontiguousarray(C), k)
    cur = np.zeros(n, dtype=C.dtype)
    first = _first_gains(C, nonnegative)
    heap = [(-g, j, 0) for j, g in enumerate(first.tolist())]
    heapq.heapify(heap)
    for t in range(k):
        batch = 1
        while heap[0][2] != t:
            popped = []
            while heap and len(popped) < batch and heap[0][2] != t:
                popped.append(heapq.heappop(heap)[1])
            fresh = row_gains(C, np.array(popped, dtype=np.int64), cur)
            for j, g in zip(popped, fresh.tolist()):
                heapq.heappush(heap, (-g, j, t))
            batch = min(2 * batch, max_batch)
        neg, j, _ = heapq.heappop(heap)
        order[t], gains[t] = j, -neg
        np.maximum(cur, C[j], out=cur)
    return order, gains


def prefix_weights(S: np.ndarray, order: np.ndarray, ks, *, symmetric: bool = False,
                   engine: str = "auto") -> dict[int, np.ndarray]:
    """For each k in `ks`, the weight of each of `order[:k]`: how many of the N examples have it
    as their most similar selected element (ties to the earlier-selected one), so the weights sum
    to N. One pass over the order, O(max(ks) * N)."""
    C = _candidate_major(S, symmetric)
    n = C.shape[1]  # examples
    ks = sorted(set(int(k) for k in ks))
    out: dict[int, np.ndarray] = {}
    if not ks:
        return out
    if ks[0] >= 1 and _compiled(C, engine):
        counts = kernels(C.dtype).prefix_counts(np.ascontiguousarray(C), np.asarray(order, dtype=np.int64),
                                         np.array(ks, dtype=np.int64))
        return {k: counts[t, :k].copy() for t, k in enumerate(ks)}
    best = np.full(n, -np.inf, dtype=np.float64)
    owner = np.zeros(n, dtype=np.int64)  # position in `order` of each example's nearest
    want = iter(ks)
    target = next(want)
    for pos in range(max(ks)):
        row = C[order[pos]]
        better = row > best  # strict: an exact tie stays with the earlier-selected element
        best[better] = row[better]
        owner[better] = pos
        while target == pos + 1:
            out[target] = np.bincount(owner, minlength=target)[:target].astype(np.float64)
            target = next(want, None)
    return out


def nearest_weights(S: np.ndarray, selected: np.ndarray) -> np.ndarray:
    """Plain reference for `prefix_weights`: argmax over the selected columns of S."""
    sub = np.asarray(S)[:, np.asarray(selected)]
    owner = np.argmax(sub, axis=1)  # first maximum = earlier-selected element
    return np.bincount(owner, minlength=len(selected)).astype(np.float64)


def facility_value(S: np.ndarray, selected: np.ndarray) -> float:
    """`F(T) = sum_i max_{j in T} S(i, j)` in float64."""
    sub = np.asarray(S)[:, np.asarray(selected)]
    return float(sub.max(axis=1).astype(np.float64).sum())
