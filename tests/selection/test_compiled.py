"""The compiled engine (`mint.selection._compiled`, numba) against the numpy engine, bit for bit:
each kernel against its numpy counterpart, the compiled lazy greedy against naive greedy on
random, duplicated and rounded inputs, and whole selections (indices, weights, gains, alpha,
errors, curve) with `engine="numba"` against `engine="numpy"`."""
from __future__ import annotations

import numpy as np
import pytest

from mint import select_coreset
from mint.errors import MintError
from mint.selection import engine as engine_mod
from mint.selection.alpha import alpha_similarity, evaluate_alpha
from mint.selection.distances import DistanceColumns, pairwise_distances, prefix_min_sums
from mint.selection.facility import (lazy_greedy, naive_greedy, nearest_weights, prefix_weights, row_gains,
                                    similarity_from_distance)

pytest.importorskip("numba", reason="numba is a dependency of mint (pip install numba); the compiled engine needs it")

from mint.selection.engine import kernels, sum_chunk  # noqa: E402


def _features(n, d, seed, variant="plain", dtype=np.float32):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(max(2, n // 20), d))
    X = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.normal(size=(n, d))
    if variant == "duplicated":  # exact ties in gains
        X[rng.integers(0, n, n // 2)] = X[rng.integers(0, n)]
    if variant == "rounded":  # many exact and near ties
        X = np.round(X, 1)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X.astype(dtype)


def _similarity(X, dtype=np.float32):
    return similarity_from_distance(pairwise_distances(X, dtype=dtype))


def _lane_order_sum(terms) -> float:
    """The gains' summation order written out plainly (`facility.lane_sums`): lane i % 32 summed
    left to right from 0.0, then the fixed tree over the 32 lane totals."""
    acc = [0.0] * 32
    for i, t in enumerate(terms):
        acc[i % 32] += float(t)  # float64, as the engines accumulate
    r = [((acc[j] + acc[j + 8]) + acc[j + 16]) + acc[j + 24] for j in range(8)]
    return ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 64, 127, 300, 1000, 8191, 8192, 8193, 20_000])
def test_gains_follow_the_lane_order_in_both_engines(n, dtype):
    rng = np.random.default_rng(n)
    C = (rng.random((3, n)) ** 6 * rng.choice([1e-6, 1.0, 300.0], size=(3, n))).astype(dtype)
    cur = (rng.random(n) * 0.5).astype(dtype)
    rows = np.array([2, 0, 1], dtype=np.int64)
    for coverage in (cur, np.zeros(n, dtype=dtype)):
        want = np.array([_lane_order_sum(np.maximum(C[j], coverage) - coverage) for j in rows])
        assert row_gains(C, rows, coverage).tobytes() == want.tobytes()  # numpy engine
        assert kernels(dtype).row_gains(C, rows, coverage).tobytes() == want.tobytes()  # compiled
        one = row_gains(C, rows[:1], coverage)  # a single row: no other rows change its sum
        assert one.tobytes() == want[:1].tobytes()


@pytest.mark.parametrize("seed", range(12))
def test_compiled_lazy_equals_naive(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    variant = ("plain", "duplicated", "rounded")[seed % 3]
    dtype = np.float64 if seed % 4 == 3 else np.float32
    S = _similarity(_features(n, int(rng.integers(2, 12)), seed, variant), dtype)
    k = int(rng.integers(1, n + 1))
    o_naive, g_naive = naive_greedy(S, k, symmetric=True)
    o_fast, g_fast = lazy_greedy(S, k, symmetric=True, nonnegative=True, engine="numba")
    assert o_fast.tolist() == o_naive.tolist()
    assert g_fast.tobytes() == g_naive.tobytes()
    o_np, g_np = lazy_greedy(S, k, symmetric=True, nonnegative=True, engine="numpy")
    assert o_np.tobytes() == o_fast.tobytes() and g_np.tobytes() == g_fast.tobytes()


def test_compiled_lazy_on_long_rows_and_identical_rows():
    # rows longer than numpy's cast buffer (8,192), a few steps; and all-identical rows (all gains tie)
    S = _similarity(_features(9000, 3, 1, "rounded"))
    o, g = lazy_greedy(S, 12, symmetric=True, engine="numba")
    o_ref, g_ref = lazy_greedy(S, 12, symmetric=True, engine="numpy")
    assert o.tobytes() == o_ref.tobytes() and g.tobytes() == g_ref.tobytes()
    same = _similarity(np.ones((7, 3), dtype=np.float32))
    o, g = lazy_greedy(same, 7, symmetric=True, engine="numba")
    assert o.tolist() == list(range(7)) and np.all(g == 0)


def test_compiled_lazy_reads_columns_of_a_nonsymmetric_matrix():
    S = np.random.default_rng(5).random((40, 40))
    assert lazy_greedy(S, 15, engine="numba")[0].tolist() == naive_greedy(S, 15)[0].tolist()


@pytest.mark.parametrize("seed", range(6))
def test_rectangular_lazy_equals_naive(seed):
    # N examples x M candidates (the second round of a partitioned selection), given as C.T of a
    # candidate-major C: both engines equal naive greedy, and the weights equal the plain argmax
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(2, 900)), int(rng.integers(1, 300))
    dtype = np.float64 if seed % 2 else np.float32
    C = rng.random((m, n))
    if seed % 3 == 1:
        C = np.round(C, 1)  # exact ties
    if seed % 3 == 2:
        C[rng.integers(0, m, m // 2)] = C[0]  # duplicated candidates
    C = np.ascontiguousarray(C.astype(dtype))
    k = int(rng.integers(1, m + 1))
    o_naive, g_naive = naive_greedy(C.T, k)
    ks = sorted({1, k, max(1, k // 2)})
    for engine in ("numba", "numpy"):
        o, g = lazy_greedy(C.T, k, nonnegative=True, engine=engine)
        assert o.tobytes() == o_naive.tobytes() and g.tobytes() == g_naive.tobytes()
        w = prefix_weights(C.T, o, ks, engine=engine)
        assert all(np.array_equal(w[j], nearest_weights(C.T, o[:j])) and w[j].sum() == n for j in ks)
    with pytest.raises(ValueError, match="square"):
        lazy_greedy(C.T, 1, symmetric=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prefix_weights_alpha_similarity_and_errors_match_numpy(dtype):
    X, Y = _features(700, 6, 3, "duplicated"), _features(700, 6, 4, "rounded")
    d_pt, d_ifl = pairwise_distances(X, dtype=dtype), pairwise_distances(Y, dtype=dtype)
    for alpha in (0.1, 0.5, 0.95075, 0.999):
        S_fast = alpha_similarity(d_pt, d_ifl, alpha, np.empty_like(d_pt), engine="numba")
        S_np = alpha_similarity(d_pt, d_ifl, alpha, np.empty_like(d_pt), engine="numpy")
        assert S_fast.tobytes() == S_np.tobytes()
    order, _ = lazy_greedy(S_np, 200, symmetric=True, engine="numpy")
    ks = [1, 35, 36, 200]
    fast, slow = (prefix_weights(S_np, order, ks, symmetric=True, engine=e) for e in ("numba", "numpy"))
    assert all(fast[k].tobytes() == slow[k].tobytes() for k in ks) and all(fast[k].sum() == 700 for k in ks)
    targets = np.array(ks, dtype=np.int64)
    got = kernels(dtype).prefix_min_sums(d_pt, order, targets, sum_chunk(dtype))
    want = prefix_min_sums(DistanceColumns.from_matrix(d_pt), order, ks)
    assert got.tolist() == [want[k] for k in ks]
    assert evaluate_alpha(d_pt, d_ifl, 0.9, 50, engine="numba")[:2] == evaluate_alpha(d_pt, d_ifl, 0.9, 50,
                                                                                       engine="numpy")[:2]


def _digest(res):
    parts = [res.order.tobytes(), res.gains.tobytes(), repr(res.alpha).encode()]
    for r in sorted(res.subsets):
        s = res.subsets[r]
        parts += [s.indices.tobytes(), s.weights.tobytes(), repr((s.e_pt, s.e_ifl)).encode()]
    if res.curve is not None:
        parts += [res.curve.alpha.tobytes(), res.curve.e_pt.tobytes(), res.curve.e_ifl.tobytes()]
    return parts


@pytest.mark.parametrize("case", [
    dict(),
    dict(dtype="float64"),
    dict(alpha_method="golden"),
    dict(alpha=0.95, cache_distances=True),
    dict(coef=(0.2, 1.0, 0.5)),
    dict(method="craig"),
    dict(strategy="partitioned", partition_size=400),
    dict(n_jobs=2),
    dict(strategy="partitioned", partition_size=400, n_jobs=2),
], ids=["auto", "float64", "golden", "cached", "coef", "craig", "partitioned", "two_workers", "parts_in_workers"])
def test_selection_is_the_same_with_either_engine(case):
    feats = {kind: _features(1200, 8, seed, variant) for kind, seed, variant in
             (("sft", 0, "plain"), ("pt", 1, "duplicated"), ("ifl", 2, "rounded"))}
    kw = {"ratios": [0.05, 0.1, 0.15], "progress": False, "n_jobs": 1, **case}
    fast = select_coreset(feats, engine="numba", **kw)
    slow = select_coreset(feats, engine="numpy", **kw)
    assert _digest(fast) == _digest(slow)


def test_engine_settings_are_checked(monkeypatch):
    feats = {k: _features(30, 4, i) for i, k in enumerate(("sft", "pt", "ifl"))}
    with pytest.raises(MintError, match="engine 'fast' is not one of auto, numba, numpy"):
        select_coreset(feats, engine="fast", progress=False)
    monkeypatch.setattr(engine_mod, "numba_available", lambda: False)
    with pytest.raises(MintError, match="pip install numba"):
        select_coreset(feats, engine="numba", progress=False)
    assert engine_mod.resolve_engine("auto", 5000) == "numpy"  # falls back, with a warning
    assert select_coreset(feats, engine="auto", progress=False, n_jobs=1).order.size == 2
