"""The compiled kernels of the exact engine (numba): lazy greedy, prefix weights, the alpha scan's
similarity and E(T), without a Python step per heap pop.

Imported only through `mint.selection.engine.kernels(dtype)`, never at `import mint.selection`, and
compiled on first use for each dtype (`cache=True`: once per machine, then loaded from the cache).

Same bytes as the numpy engine. Every float operation here is one the numpy engine does, in the
same order:
- a gain is `sum_i max(c_i, cur_i) - cur_i`, the terms in the matrix's dtype, summed in float64 in
  the fixed order of `facility.lane_sums` (32 lanes left to right, then a fixed tree; `_gain`);
- E(T) is summed as numpy's `ndarray.sum(dtype=float64)` does: its own pairwise summation (blocks
  of 128 summed with 8 accumulators, larger ranges split in two at a multiple of 8; `_plan`).
  When the terms are float32 numpy casts them in buffers of `numpy.getbufsize()` elements (8,192)
  and adds the pairwise sums of consecutive buffers left to right; float64 terms are summed in one
  range. The caller passes that buffer length as `chunk` (0 for float64);
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


@nb.njit(cache=True, nogil=True, inline="always")
def _leaf(a, lo, n):
    """numpy's pairwise sum of a[lo:lo+n] for n <= 128: 8 accumulators, combined as a tree,
    then the remainder (n % 8) added one by one. (Indexing a view from 0, so that the compiler
    sees non-negative indices and loads 8 values at once instead of gathering them.)"""
    x = a[lo:lo + n]
    if n < 8:
        res = 0.0
        for i in range(n):
            res += x[i]
        return res
    r0, r1, r2, r3, r4, r5, r6, r7 = x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]
    m = n - n % 8
    for i in range(8, m, 8):
        r0 += x[i]
        r1 += x[i + 1]
        r2 += x[i + 2]
        r3 += x[i + 3]
        r4 += x[i + 4]
        r5 += x[i + 5]
        r6 += x[i + 6]
        r7 += x[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(m, n):
        res += x[i]
    return res


@nb.njit(cache=True, nogil=True, inline="always")
def _leaf_pair(a, lo, lo2, n):
    """`_leaf` of two ranges of the same length n >= 8 at once: the same operations in the same
    order for each, interleaved, so the processor overlaps their two chains of additions."""
    x = a[lo:lo + n]
    y = a[lo2:lo2 + n]
    r0, r1, r2, r3, r4, r5, r6, r7 = x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]
    q0, q1, q2, q3, q4, q5, q6, q7 = y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]
    m = n - n % 8
    for i in range(8, m, 8):
        r0 += x[i]
        r1 += x[i + 1]
        r2 += x[i + 2]
        r3 += x[i + 3]
        r4 += x[i + 4]
        r5 += x[i + 5]
        r6 += x[i + 6]
        r7 += x[i + 7]
        q0 += y[i]
        q1 += y[i + 1]
        q2 += y[i + 2]
        q3 += y[i + 3]
        q4 += y[i + 4]
        q5 += y[i + 5]
        q6 += y[i + 6]
        q7 += y[i + 7]
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    res2 = ((q0 + q1) + (q2 + q3)) + ((q4 + q5) + (q6 + q7))
    for i in range(m, n):
        res += x[i]
        res2 += y[i]
    return res, res2


@nb.njit(cache=True, nogil=True, inline="always")
def _half(n):
    """numpy's split point: half, rounded down to a multiple of 8."""
    n2 = n // 2
    return n2 - n2 % 8


@nb.njit(cache=True, nogil=True)
def _plan(n, chunk):
    """How numpy sums n float64 values (chunk: its cast buffer length, 0 for none): the ranges
    of 128 or fewer values that are summed by `_leaf` (the leaves, in order) and the postfix
    program that adds their sums (leaf number >= 0: push its sum; -1: add the top two, the
    earlier one on the left). A range of more than 128 is the sum of its two halves, left first
    (numpy's recursion, unrolled onto a stack: a recursive njit function does not survive numba's
    cache); consecutive buffers are added left to right. Every row of a matrix has the same n,
    so a kernel plans once and sums many rows (`_planned_sum`), the scratch included."""
    step = n if chunk <= 0 or n <= chunk else chunk
    step = max(step, 1)
    cap = n // 32 + 2 * (n // step) + 8  # a leaf split off a larger range holds >= 64 values
    leaf_lo = np.empty(cap, np.int64)
    leaf_n = np.empty(cap, np.int64)
    prog = np.empty(2 * cap, np.int64)
    nodes = np.empty((3, 64), np.int64)  # per level: start, length, 1/2 = in its left/right half
    nl = 0
    npg = 0
    for s in range(0, max(n, 1), step):
        d = 0
        nodes[0, 0], nodes[1, 0] = s, min(step, n - s)
        while True:
            if nodes[1, d] <= _BLOCK:
                leaf_lo[nl], leaf_n[nl], prog[npg] = nodes[0, d], nodes[1, d], nl
                nl += 1
                npg += 1
                d -= 1
                while d >= 0:  # climb until a range still needs its right half
                    if nodes[2, d] == 1:
                        nodes[2, d] = 2
                        n2 = _half(nodes[1, d])
                        nodes[0, d + 1], nodes[1, d + 1] = nodes[0, d] + n2, nodes[1, d] - n2
                        d += 1
                        break
                    prog[npg] = -1  # this range = left half + right half
                    npg += 1
                    d -= 1
                if d < 0:
                    break
            else:
                nodes[2, d] = 1
                nodes[0, d + 1], nodes[1, d + 1] = nodes[0, d], _half(nodes[1, d])
                d += 1
        if s > 0:
            prog[npg] = -1  # the running total + this buffer's sum
            npg += 1
    buf = np.empty(max(n, 1), np.float64)
    return buf, leaf_lo[:nl].copy(), leaf_n[:nl].copy(), prog[:npg].copy(), np.empty(nl), np.empty(68)


@nb.njit(cache=True, nogil=True)
def _planned_sum(plan):
    """numpy's float64 sum of the plan's buffer (`_plan`)."""
    buf, leaf_lo, leaf_n, prog, sums, stack = plan
    nl = leaf_lo.shape[0]
    ell = 0
    while ell < nl:
        m = leaf_n[ell]
        if ell + 1 < nl and leaf_n[ell + 1] == m and m >= 8:
            sums[ell], sums[ell + 1] = _leaf_pair(buf, leaf_lo[ell], leaf_lo[ell + 1], m)
            ell += 2
        else:
            sums[ell] = _leaf(buf, leaf_lo[ell], m)
            ell += 1
    sp = 0
    for i in range(prog.shape[0]):
        op = prog[i]
        if op < 0:
            sp -= 1
            stack[sp - 1] = stack[sp - 1] + stack[sp]
        else:
            stack[sp] = sums[op]
            sp += 1
    return stack[0]


@nb.njit(cache=True, nogil=True, inline="always")
def _gain(row, cur, acc):
    """`facility.lane_sums` of the terms `max(c_i, cur_i) - cur_i` (in the row's dtype, cast to
    float64): 32 lanes summed left to right in `acc` (scratch of 32), then the fixed tree. The
    inner loop over the 32 lanes is what the compiler turns into vector additions."""
    n = row.shape[0]
    full = n - n % 32
    for lane in range(32):
        acc[lane] = 0.0
    for base in range(0, full, 32):
        for lane in range(32):
            acc[lane] += np.float64(max(row[base + lane], cur[base + lane]) - cur[base + lane])
    for i in range(full, n):
        acc[i - full] += np.float64(max(row[i], cur[i]) - cur[i])
    r0 = ((acc[0] + acc[8]) + acc[16]) + acc[24]
    r1 = ((acc[1] + acc[9]) + acc[17]) + acc[25]
    r2 = ((acc[2] + acc[10]) + acc[18]) + acc[26]
    r3 = ((acc[3] + acc[11]) + acc[19]) + acc[27]
    r4 = ((acc[4] + acc[12]) + acc[20]) + acc[28]
    r5 = ((acc[5] + acc[13]) + acc[21]) + acc[29]
    r6 = ((acc[6] + acc[14]) + acc[22]) + acc[30]
    r7 = ((acc[7] + acc[15]) + acc[23]) + acc[31]
    return ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))


@nb.njit(cache=True, nogil=True)
def row_gains(C, rows, cur):
    """`facility.row_gains`: the gain of each candidate in `rows` given the coverage `cur`."""
    acc = np.empty(32, np.float64)
    out = np.empty(rows.shape[0], np.float64)
    for r in range(rows.shape[0]):
        out[r] = _gain(C[rows[r]], cur, acc)
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
def lazy_greedy(C, k):
    """Lazy greedy on the candidate-major matrix C (row j = candidate j's similarities), k <= n
    steps. The heap holds (bound, index, step evaluated); the top is re-evaluated in place until
    it was evaluated in this step, and is then the step's pick. C may be rectangular (m candidates
    x n examples, k <= m). Returns (order, gains)."""
    m, n = C.shape
    cur = np.zeros(n, C.dtype)
    acc = np.empty(32, np.float64)
    bound = np.empty(m, np.float64)
    index = np.arange(m)
    step = np.zeros(m, np.int64)
    for j in range(m):
        bound[j] = _gain(C[j], cur, acc)
    for pos in range(m // 2 - 1, -1, -1):
        _sift_down(bound, index, step, pos, m)
    order = np.empty(k, np.int64)
    gains = np.empty(k, np.float64)
    size = m
    for t in range(k):
        while step[0] != t:
            bound[0] = _gain(C[index[0]], cur, acc)
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
    (strictly more similar than every earlier pick). C: candidates x n examples."""
    n = C.shape[1]
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
    plan = _plan(n, chunk)
    buf = plan[0]
    out = np.empty(targets.shape[0], np.float64)
    t = 0
    for pos in range(targets[-1]):
        row = d[order[pos]]
        for i in range(n):
            best[i] = min(best[i], row[i])
        while t < targets.shape[0] and targets[t] == pos + 1:
            for i in range(n):
                buf[i] = best[i]
            out[t] = _planned_sum(plan)
            t += 1
    return out
