"""Facility location and distances: lazy greedy against naive greedy, a hand-built order,
element 0 as an ordinary candidate, weights, and the block distance kernel."""
from __future__ import annotations

import numpy as np
import pytest

from mint.selection.distances import alpha_combination, coef_combination, combined_distances, cross_distances, pairwise_distances
from mint.selection.facility import (
    facility_value,
    lazy_greedy,
    naive_greedy,
    nearest_weights,
    prefix_weights,
    similarity_from_distance,
)


def _similarity(X, dtype=np.float32):
    return similarity_from_distance(pairwise_distances(X, dtype=dtype))


def _plain_gains_greedy(S, k):
    """The simplest possible greedy (column sums, Python loop) as an independent reference."""
    S = np.asarray(S, dtype=np.float64)
    n = S.shape[0]
    cur = np.zeros(n)
    order, gains = [], []
    for _ in range(k):
        g = np.maximum(S - cur[:, None], 0).sum(axis=0)
        g[order] = -np.inf
        j = int(np.argmax(g))
        order.append(j)
        gains.append(g[j])
        cur = np.maximum(cur, S[:, j])
    return np.array(order), np.array(gains)


HAND_S = np.array(
    [
        [5, 1, 0, 0, 0, 0],
        [4, 5, 0, 0, 0, 0],
        [0, 0, 5, 4, 0, 0],
        [0, 0, 4, 5, 0, 0],
        [0, 0, 0, 0, 5, 3],
        [0, 0, 0, 0, 3, 5],
    ],
    dtype=np.float64,
)


@pytest.mark.parametrize("greedy", [naive_greedy, lazy_greedy])
def test_hand_built_order(greedy):
    # column sums 9, 6, 9, 9, 8, 8: the three-way tie at 9 goes to index 0 (a real gain,
    # not a marker), then 2; worked out by hand in the comments of this file's history.
    order, gains = greedy(HAND_S, 6)
    assert order.tolist() == [0, 2, 4, 5, 1, 3]
    assert gains.tolist() == [9, 9, 8, 2, 1, 1]
    assert order.dtype == np.int64 and gains.dtype == np.float64


@pytest.mark.parametrize("seed", range(12))
def test_lazy_equals_naive(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    X = rng.normal(size=(n, int(rng.integers(2, 12)))).astype(np.float32)
    if seed % 3 == 0:  # duplicated rows: exact ties in gains
        X[rng.integers(0, n, size=n // 2)] = X[rng.integers(0, n)]
    if seed % 4 == 1:  # clusters: many near-ties
        X = np.round(X, 1)
    S = _similarity(X)
    k = int(rng.integers(1, n + 1))
    o_naive, g_naive = naive_greedy(S, k)
    o_lazy, g_lazy = lazy_greedy(S, k, symmetric=True, nonnegative=bool(seed % 2), max_batch=int(rng.integers(1, 9)))
    np.testing.assert_array_equal(o_lazy, o_naive)
    np.testing.assert_array_equal(g_lazy, g_naive)  # bit for bit
    assert np.all(np.diff(g_naive) <= 0)  # submodular: gains never increase
    o_plain, g_plain = _plain_gains_greedy(S, k)
    np.testing.assert_array_equal(o_plain, o_naive)
    np.testing.assert_allclose(g_plain, g_naive, rtol=1e-12, atol=1e-9)


def test_nonsymmetric_matrix_reads_columns():
    rng = np.random.default_rng(5)
    S = rng.random((30, 30))
    np.testing.assert_array_equal(lazy_greedy(S, 10)[0], _plain_gains_greedy(S, 10)[0])
    np.testing.assert_array_equal(naive_greedy(S, 10)[0], _plain_gains_greedy(S, 10)[0])


def test_element_zero_is_an_ordinary_candidate():
    # Regression for the reference defect (`if not ndx`): row 0 is an outlier far from
    # everything, so it must not come first, and its gain must be its real one.
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 4)) * 0.1
    X[0] = 50.0
    S = _similarity(X, np.float64)
    order, gains = lazy_greedy(S, 40, symmetric=True)
    assert order[0] != 0
    pos = int(np.flatnonzero(order == 0)[0])
    before = order[:pos]
    cur = S[:, before].max(axis=1)
    assert gains[pos] == pytest.approx(np.maximum(S[:, 0] - cur, 0).sum())
    # ... and when 0 is the best element it is picked first with its true gain
    Y = np.zeros((5, 2))
    Y[1:] = [[3, 0], [-3, 0], [0, 3], [0, -3]]
    S2 = _similarity(Y, np.float64)
    o2, g2 = lazy_greedy(S2, 1, symmetric=True)
    assert o2[0] == 0 and g2[0] == pytest.approx(S2[:, 0].sum())


def test_identical_rows_terminate_and_weights():
    X = np.ones((7, 3), dtype=np.float32)
    S = _similarity(X)
    order, gains = lazy_greedy(S, 7, symmetric=True)
    assert order.tolist() == list(range(7))  # all ties: smaller index first
    assert gains[0] == 0 and np.all(gains == 0)
    w = prefix_weights(S, order, [1, 3, 7], symmetric=True)
    assert w[1].tolist() == [7]
    assert w[3].tolist() == [7, 0, 0]  # duplicates never nearest (tie to earlier) get weight 0


@pytest.mark.parametrize("seed", range(4))
def test_prefix_weights_match_reference(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    X[10:15] = X[3]  # some duplicates
    S = _similarity(X)
    order, _ = lazy_greedy(S, 30, symmetric=True)
    ws = prefix_weights(S, order, [1, 7, 30], symmetric=True)
    for k, w in ws.items():
        np.testing.assert_array_equal(w, nearest_weights(S, order[:k]))
        assert w.sum() == 60


def test_facility_value_is_sum_of_gains():
    rng = np.random.default_rng(2)
    S = _similarity(rng.normal(size=(50, 6)), np.float64)
    order, gains = naive_greedy(S, 12, symmetric=True)
    assert facility_value(S, order) == pytest.approx(gains.sum(), rel=1e-12)


def test_distances_match_direct_formula():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(37, 9))
    direct = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=2)
    for block in (5, 16, 64):
        D = pairwise_distances(X, dtype=np.float64, block=block)
        np.testing.assert_allclose(D, direct, atol=1e-10)
        assert np.array_equal(D, D.T) and np.all(np.diag(D) == 0)
    D32 = pairwise_distances(X.astype(np.float32), block=8)
    assert D32.dtype == np.float32 and np.array_equal(D32, D32.T) and np.all(np.diag(D32) == 0)
    np.testing.assert_allclose(D32, direct, atol=1e-4)
    # off the diagonal the kernels agree closely; a self-distance through the Gram formula is
    # sqrt(rounding) ~ 1e-8, which is why square matrices set their diagonal to exactly 0
    np.testing.assert_allclose(cross_distances(X, X[:4], dtype=np.float64, block=7), direct[:, :4], atol=1e-6)
    dup = np.repeat(X[:1], 3, axis=0)  # identical rows: exactly 0, never NaN
    assert np.all(pairwise_distances(dup) == 0)


def test_combined_distances_follow_the_formula():
    rng = np.random.default_rng(4)
    feats = {k: rng.normal(size=(23, 6)) for k in ("sft", "pt", "ifl")}
    d = {k: pairwise_distances(v, dtype=np.float64) for k, v in feats.items()}
    a = 0.37
    Da = combined_distances(feats, alpha_combination(a), dtype=np.float64, block=7)
    np.testing.assert_allclose(Da, d["pt"] / a + d["ifl"] / (1 - a), rtol=1e-12, atol=1e-12)
    Dc = combined_distances(feats, coef_combination((0.5, 0.0, 2.0)), dtype=np.float64, block=10)
    np.testing.assert_allclose(Dc, 0.5 * d["sft"] + 2.0 * d["ifl"], rtol=1e-12, atol=1e-12)
    # a zero coefficient means that kind is never read (here it is absent: reading it would fail)
    no_sft = {"pt": feats["pt"], "ifl": feats["ifl"]}
    assert coef_combination((0.0, 1.0, 1.0)).kinds == ("pt", "ifl")
    D = combined_distances(no_sft, coef_combination((0.0, 1.0, 1.0)), dtype=np.float64, block=9)
    np.testing.assert_allclose(D, d["pt"] + d["ifl"], rtol=1e-12, atol=1e-12)
    assert np.array_equal(D, D.T) and np.all(np.diag(D) == 0)


def test_similarity_from_distance():
    rng = np.random.default_rng(8)
    D = pairwise_distances(rng.normal(size=(12, 3)).astype(np.float32))
    S = similarity_from_distance(D)
    assert S.dtype == np.float32 and S.min() == 0 and np.all(np.diag(S) == D.max())
    np.testing.assert_array_equal(S, D.max() - D)
    # in place, and with the maximum given by the caller: the same bytes
    out = D.copy()
    assert similarity_from_distance(out, out=out, top=float(D.max())) is out
    assert out.tobytes() == S.tobytes()
