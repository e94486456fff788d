"""The compiled kernels of the exact engine (numba): lazy greedy, prefix weights, the alpha scan's
similarity and E(T), without a Python step per heap pop.

Imported only through `mint.selection.engine.kernels()`, never at `import mint.selection`, and
compiled on first use for each dtype (`cache=True`: once per machine, then loaded from the cache).

Same bytes as the numpy engine. Every float operation here is one the numpy engine does, in the
same order:
- a gain is `sum_i max(c_i, cur_i) - cur_i`, the terms in the matrix's dtype, summed in float64 by
  numpy's own pairwise summation (`_pairwise`: blocks of 128 summed with 8 accumulators, larger
  ranges split in two at a multiple of 8), which is what `ndarray.sum(dtype=float64)` does. When the
  terms are float32 numpy casts them in buffers of `numpy.getbufsize()` elements (8,192) and adds
  the pairwise sums of consecutive buffers left to right; float64 terms are summed in one range.
  The caller passes that buffer length as `chunk` (0 for float64);
- the heap pops `(largest bound, smallest index)` first, so ties go to the smaller index and the
  order is naive greedy's (the argument in `mint.selection.facility`);
- `alpha_similarity` is `D = d_PT / a + d_IFL / (1 - a)` with the factors rounded to the matrix
  dtype first (numpy's rule for a Python float and a float32 array), then `S = max(D) - D`;
- maxima, minima and comparisons are exact, so their order never matters.
tests/selection/test_compiled.py checks each kernel against its numpy counterpart bit for bit.
"""
from __future__ import annotations

import numba as nb
import numpy as np

_BLOCK = 128  # numpy's PW_BLOCKSIZE: ranges up to this length are summed with 8 accumulators


@nb.njit(cache=True, nogil=True)
def _leaf(a, lo, n):
    """numpy's pairwise sum of a[lo:lo+n] for n <= 128: 8 accumulators, combined as a tree,
    then the remainder (n % 8) added one by one."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0 = a[lo]
    r1 = a[lo + 1]
    r2 = a[lo + 2]
    r3 = a[lo + 3]
    r4 = a[lo + 4]
    r5 = a[lo + 5]
    r6 = a[lo + 6]
    r7 = a[lo + 7]
    m = n - n % 8
    for i in range(lo + 8, lo + m, 8):
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(lo + m, lo + n):
        res += a[i]
    return res


@nb.njit(cache=True, nogil=True)
def _half(n):
    """numpy's split point: half, rounded down to a multiple of 8."""
    n2 = n // 2
    return n2 - n2 % 8


@nb.njit(cache=True, nogil=True)
def _pairwise(a, lo0, n0):
    """numpy's pairwise sum of a[lo0:lo0+n0] (float64), its recursion unrolled onto a stack (a
    recursive njit function does not survive numba's cache): a node is a range; a range of more
    than 128 is the sum of its two halves, left first."""
    if n0 <= _BLOCK:
        return _leaf(a, lo0, n0)
    lo = np.empty(64, np.int64)
    size = np.empty(64, np.int64)
    state = np.empty(64, np.int64)  # 1: computing the left half, 2: the right half
    left = np.empty(64, np.float64)
    d = 0
    lo[0], size[0] = lo0, n0
    while True:
        if size[d] <= _BLOCK:
            v = _leaf(a, lo[d], size[d])
            d -= 1
            while d >= 0:  # hand the value up until a node still needs its right half
                if state[d] == 1:
                    left[d] = v
                    state[d] = 2
                    n2 = _half(size[d])
                    lo[d + 1], size[d + 1] = lo[d] + n2, size[d] - n2
                    d += 1
                    break
                v = left[d] + v
                d -= 1
            if d < 0:
                return v
        else:
            state[d] = 1
            lo[d + 1], size[d + 1] = lo[d], _half(size[d])
            d += 1


@nb.njit(cache=True, nogil=True)
def _sum(a, n, chunk):
    """`a[:n].sum()` as numpy sums float64 values cast from float32 (chunk = its buffer length)
    or float64 values (chunk = 0: one range)."""
    if chunk <= 0 or n <= chunk:
        return _pairwise(a, 0, n)
    res = 0.0
    for s in range(0, n, chunk):
        res += _pairwise(a, s, min(chunk, n - s))
    return res


@nb.njit(cache=True, nogil=True)
def _gain(row, cur, buf, chunk):
    n = row.shape[0]
    for i in range(n):
        buf[i] = np.float64(max(row[i], cur[i]) - cur[i])
    return _sum(buf, n, chunk)


@nb.njit(cache=True, nogil=True)
def row_gains(C, rows, cur, chunk):
    """`facility.row_gains`: the gain of each candidate in `rows` given the coverage `cur`."""
    buf = np.empty(C.shape[1], np.float64)
    out = np.empty(rows.shape[0], np.float64)
    for r in range(rows.shape[0]):
        out[r] = _gain(C[rows[r]], cur, buf, chunk)
    return out


@nb.njit(cache=True, nogil=True)
def _before(ga, ia, gb, ib):
    """Heap order: the larger bound first, ties to the smaller index."""
    return ga > gb or (ga == gb and ia < ib)


@nb.njit(cache=True, nogil=True)
def _sift_down(bound, index, step, pos, size):
    g, i, s = bound[pos], index[pos], step[pos]
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _before(bound[child + 1], index[child + 1], bound[child], index[child]):
            child += 1
        if not _before(bound[child], index[child], g, i):
            break
        bound[pos], index[pos], step[pos] = bound[child], index[child], step[child]
        pos = child
    bound[pos], index[pos], step[pos] = g, i, s


@nb.njit(cache=True, nogil=True)
def lazy_greedy(C, k, chunk):
    """Lazy greedy on the candidate-major matrix C (row j = candidate j's similarities), k <= n
    steps. The heap holds (bound, index, step evaluated); the top is re-evaluated in place until
    it was evaluated in this step, and is then the step's pick. Returns (order, gains)."""
    n = C.shape[0]
    cur = np.zeros(n, C.dtype)
    buf = np.empty(n, np.float64)
    bound = np.empty(n, np.float64)
    index = np.arange(n)
    step = np.zeros(n, np.int64)
    for j in range(n):
        bound[j] = _gain(C[j], cur, buf, chunk)
    for pos in range(n // 2 - 1, -1, -1):
        _sift_down(bound, index, step, pos, n)
    order = np.empty(k, np.int64)
    gains = np.empty(k, np.float64)
    size = n
    for t in range(k):
        while step[0] != t:
            bound[0] = _gain(C[index[0]], cur, buf, chunk)
            step[0] = t
            _sift_down(bound, index, step, 0, size)
        j = index[0]
        order[t], gains[t] = j, bound[0]
        size -= 1
        bound[0], index[0], step[0] = bound[size], index[size], step[size]
        _sift_down(bound, index, step, 0, size)
        row = C[j]
        for i in range(n):
            if row[i] > cur[i]:
                cur[i] = row[i]
    return order, gains


@nb.njit(cache=True, nogil=True)
def prefix_counts(C, order, targets):
    """`facility.prefix_weights`: row t of the result holds, for targets[t] (increasing), how
    many of the n examples have each of order[:targets[t]] as their most similar selected element
    (strictly more similar than every earlier pick)."""
    n = C.shape[0]
    best = np.full(n, -np.inf)
    owner = np.zeros(n, np.int64)
    out = np.zeros((targets.shape[0], targets[-1]), np.float64)
    t = 0
    for pos in range(targets[-1]):
        row = C[order[pos]]
        for i in range(n):
            if row[i] > best[i]:
                best[i] = row[i]
                owner[i] = pos
        while t < targets.shape[0] and targets[t] == pos + 1:
            for i in range(n):
                out[t, owner[i]] += 1.0
            t += 1
    return out


@nb.njit(cache=True, nogil=True)
def alpha_similarity(d_pt, d_ifl, a, b, out):
    """`alpha.alpha_similarity`: out = max(D) - D with D = d_pt / a + d_ifl / (1 - a), where
    a and b = 1 - a come already rounded to the matrices' dtype."""
    n, m = out.shape
    top = d_pt[0, 0] / a + d_ifl[0, 0] / b  # in the matrices' dtype, as every value below
    for i in range(n):
        for j in range(m):
            v = d_pt[i, j] / a + d_ifl[i, j] / b
            out[i, j] = v
            if v > top:
                top = v
    for i in range(n):
        for j in range(m):
            out[i, j] = top - out[i, j]


@nb.njit(cache=True, nogil=True)
def prefix_min_sums(d, order, targets, chunk):
    """`distances.prefix_min_sums` on a whole symmetric matrix: E(order[:k]) for each k in
    targets (increasing), the running minimum in d's dtype, each sum numpy's float64 sum."""
    n = d.shape[0]
    best = np.full(n, np.inf, d.dtype)
    buf = np.empty(n, np.float64)
    out = np.empty(targets.shape[0], np.float64)
    t = 0
    for pos in range(targets[-1]):
        row = d[order[pos]]
        for i in range(n):
            if row[i] < best[i]:
                best[i] = row[i]
        while t < targets.shape[0] and targets[t] == pos + 1:
            for i in range(n):
                buf[i] = best[i]
            out[t] = _sum(buf, n, chunk)
            t += 1
    return out
