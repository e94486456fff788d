"""The compiled kernels of the exact engine (numba): lazy greedy, prefix weights, the alpha scan's
similarity and E(T), without a Python step per heap pop.

Imported only through `mint.selection.engine.kernels(dtype)`, never at `import mint.selection`, and
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
def _pairwise(a, lo0, n0, nodes, left):
    """numpy's pairwise sum of a[lo0:lo0+n0] (float64), its recursion unrolled onto a stack (a
    recursive njit function does not survive numba's cache): a node is a range; a range of more
    than 128 is the sum of its two halves, left first. `nodes` (3, 64) int64 and `left` (64,)
    float64 are scratch (`_scratch`), allocated once by the caller."""
    if n0 <= _BLOCK:
        return _leaf(a, lo0, n0)
    lo, size, state = nodes[0], nodes[1], nodes[2]  # state 1: computing the left half, 2: the right
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
def _scratch(n):
    """The float64 buffer of n terms and the stack of `_pairwise`."""
    return np.empty(n, np.float64), np.empty((3, 64), np.int64), np.empty(64, np.float64)


@nb.njit(cache=True, nogil=True)
def _sum(a, n, chunk, nodes, left):
    """`a[:n].sum()` as numpy sums float64 values cast from float32 (chunk = its buffer length)
    or float64 values (chunk = 0: one range)."""
    if chunk <= 0 or n <= chunk:
        return _pairwise(a, 0, n, nodes, left)
    res = 0.0
    for s in range(0, n, chunk):
        res += _pairwise(a, s, min(chunk, n - s), nodes, left)
    return res


@nb.njit(cache=True, nogil=True)
def _gain(row, cur, buf, chunk, nodes, left):
    n = row.shape[0]
    for i in range(n):
        buf[i] = np.float64(max(row[i], cur[i]) - cur[i])
    return _sum(buf, n, chunk, nodes, left)


@nb.njit(cache=True, nogil=True)
def row_gains(C, rows, cur, chunk):
    """`facility.row_gains`: the gain of each candidate in `rows` given the coverage `cur`."""
    buf, nodes, left = _scratch(C.shape[1])
    out = np.empty(rows.shape[0], np.float64)
    for r in range(rows.shape[0]):
        out[r] = _gain(C[rows[r]], cur, buf, chunk, nodes, left)
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
    buf, nodes, left = _scratch(n)
    bound = np.empty(n, np.float64)
    index = np.arange(n)
    step = np.zeros(n, np.int64)
    for j in range(n):
        bound[j] = _gain(C[j], cur, buf, chunk, nodes, left)
    for pos in range(n // 2 - 1, -1, -1):
        _sift_down(bound, index, step, pos, n)
    order = np.empty(k, np.int64)
    gains = np.empty(k, np.float64)
    size = n
    for t in range(k):
        while step[0] != t:
            bound[0] = _gain(C[index[0]], cur, buf, chunk, nodes, left)
            step[0] = t
            _sift_down(bound, index, step, 0, size)
        j = index[0]
        order[t], gains[t] = j, bound[0]
        size -= 1
        bound[0], index[0], step[0] = bound[size], index[size], step[size]
        _sift_down(bound, index, step, 0, size)
        row = C[j]
        for i in range(n):
            cur[i] = max(cur[i], row[i])
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
    n = out.shape[0]
    top = d_pt[0, 0] / a + d_ifl[0, 0] / b  # in the matrices' dtype, as every value below
    # the maximum in 8 lanes (max is exact, so any grouping gives the same value), which the
    # vectorizer packs into one register
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = top
    for i in range(n):
        p, q, o = d_pt[i], d_ifl[i], out[i]
        for j in range(n):
            o[j] = p[j] / a + q[j] / b
        e = n - n % 8
        for j in range(0, e, 8):
            m0 = max(m0, o[j])
            m1 = max(m1, o[j + 1])
            m2 = max(m2, o[j + 2])
            m3 = max(m3, o[j + 3])
            m4 = max(m4, o[j + 4])
            m5 = max(m5, o[j + 5])
            m6 = max(m6, o[j + 6])
            m7 = max(m7, o[j + 7])
        for j in range(e, n):
            m0 = max(m0, o[j])
    top = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for i in range(n):
        o = out[i]
        for j in range(n):
            o[j] = top - o[j]


@nb.njit(cache=True, nogil=True)
def prefix_min_sums(d, order, targets, chunk):
    """`distances.prefix_min_sums` on a whole symmetric matrix: E(order[:k]) for each k in
    targets (increasing), the running minimum in d's dtype, each sum numpy's float64 sum."""
    n = d.shape[0]
    best = np.full(n, np.inf, d.dtype)
    buf, nodes, left = _scratch(n)
    out = np.empty(targets.shape[0], np.float64)
    t = 0
    for pos in range(targets[-1]):
        row = d[order[pos]]
        for i in range(n):
            best[i] = min(best[i], row[i])
        while t < targets.shape[0] and targets[t] == pos + 1:
            for i in range(n):
                buf[i] = best[i]
            out[t] = _sum(buf, n, chunk, nodes, left)
            t += 1
    return out
