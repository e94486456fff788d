"""Alpha search: the grid, plateau detection on hand-made curves, the step-aware variant,
golden-section search, and the parallel scan against the sequential one."""
from __future__ import annotations

import numpy as np
import pytest

from mint.selection.alpha import (
    alpha_grid,
    alpha_similarity,
    detect_plateau,
    evaluate_alpha,
    golden_search,
    scan_alphas,
)
from mint.selection.distances import alpha_combination, combined_distances, pairwise_distances
from mint.selection.facility import naive_greedy, similarity_from_distance


def test_grid_has_174_points_with_documented_ends():
    a = alpha_grid()
    assert len(a) == 174
    assert a[0] == 0.10 and a[-1] == 0.999
    assert np.all(np.diff(a) > 0)
    assert np.allclose(np.diff(a[:80]), 0.01)  # 0.10 ... 0.89
    assert a[79] == 0.89 and a[80] == 0.905  # step halved from 0.90 on
    steps_high = np.diff(a[83:-1])
    assert np.allclose(steps_high, 0.001)  # the 0.001 floor
    assert a[-2] == 0.99875
    assert np.array_equal(a, np.round(a, 6))


def test_flat_everywhere_takes_first_start_at_or_above_095():
    a = alpha_grid()
    p = detect_plateau(a, np.full(len(a), 3.0))
    assert a[p.index] == a[a >= 0.95][0]
    assert p.sigma == 1e-8


def test_flat_only_above_099():
    a = alpha_grid()
    m = int(np.flatnonzero(a >= 0.99)[0])
    e = np.where(np.arange(len(a)) < m, m - np.arange(len(a)), 0).astype(float)
    p = detect_plateau(a, e)
    # diffs[i] = |E[i+1] - E[i]| is 1 up to i = m-1 and 0 after; the first all-flat triple
    # starts at diff m, i.e. grid index m + 1
    assert p.index == m + 1
    assert "alpha >= 0.95" in p.reason


def test_knee_without_high_plateau_falls_back_to_first_start():
    a = alpha_grid()
    i = np.arange(len(a))
    knee = int(np.flatnonzero(a >= 0.5)[0])
    end = int(np.flatnonzero(a >= 0.8)[0])
    # steep, irregular descent, flat on [0.5, 0.8), then an irregular climb to the end
    rise = np.cumsum(1.0 + (np.arange(len(a)) % 3))
    e = np.where(i < knee, 1000.0 - 10 * i - (i % 4) * 3, 1000.0 - 10 * knee)
    e = np.where(i >= end, e + rise - rise[end] + 5, e)
    p = detect_plateau(a, e)
    # sigma = 1.4826 (MAD of the diffs): the last step into the flat part (600 -> 601) is
    # already within it, so the plateau starts exactly at the knee
    assert p.index == knee and a[p.index] == 0.5
    assert "no plateau at alpha >= 0.95; first plateau start" == p.reason


def test_no_plateau_takes_last_point():
    a = alpha_grid()
    diffs = np.where(np.arange(len(a) - 1) % 2 == 0, 1.0, 100.0)
    e = np.concatenate([[0.0], np.cumsum(diffs)])
    p = detect_plateau(a, e)
    assert p.index == len(a) - 1 and len(p.starts) == 0


def test_scaled_variant_ignores_the_grid_step():
    # E_IFL changing at a steady rate in alpha: the raw test mistakes the 10x smaller steps
    # above 0.9 for a plateau, the step-aware test does not.
    a = alpha_grid()
    st = np.diff(a)
    wobble = 1 + 0.5 * np.sin(np.arange(len(st)) * 1.3)
    e = np.concatenate([[100.0], 100.0 - np.cumsum(st * wobble * 50)])
    raw = detect_plateau(a, e)
    scaled = detect_plateau(a, e, scaled=True)
    assert 0.95 <= a[raw.index] < 0.96
    assert scaled.index == len(a) - 1 and len(scaled.starts) == 0


def test_golden_finds_minimum_of_convex_curve():
    calls = []

    def f(x):
        calls.append(x)
        return (x - 0.7231) ** 2 + 1.0

    best, evaluated = golden_search(f, tol=1e-4)
    assert abs(best - 0.7231) < 2e-4
    assert len(evaluated) == len(calls) == len(set(calls))
    best2, evaluated2 = golden_search(lambda x: abs(x - 0.2), tol=1e-3, max_iter=3)
    # the iteration cap holds: two starting points and one new point per iteration
    assert [x for x, _ in evaluated2] == [0.382202, 0.617798, 0.236596, 0.146606, 0.292212]
    # the answer is the best point evaluated so far, not the bracket's midpoint
    assert best2 == 0.236596 == min(evaluated2, key=lambda kv: (kv[1], kv[0]))[0]
    assert all(f == pytest.approx(abs(x - 0.2)) for x, f in evaluated2)


def _pre_sample(seed=0, n=40):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    Y = rng.normal(size=(n, 6)).astype(np.float32)
    return pairwise_distances(X), pairwise_distances(Y)


def test_parallel_scan_equals_sequential():
    d_pt, d_ifl = _pre_sample()
    alphas = alpha_grid()[::7]
    seq = scan_alphas(d_pt, d_ifl, alphas, 6, n_jobs=1, progress=False)
    par = scan_alphas(d_pt, d_ifl, alphas, 6, n_jobs=2, progress=False)
    np.testing.assert_array_equal(seq[0], par[0])
    np.testing.assert_array_equal(seq[1], par[1])


def test_errors_of_a_subset():
    d_pt, d_ifl = _pre_sample(1, 30)
    e_pt, e_ifl, order = evaluate_alpha(d_pt, d_ifl, 0.5, 5)
    D = d_pt / 0.5 + d_ifl / 0.5
    expected_order, _ = naive_greedy(D.max() - D, 5)
    np.testing.assert_array_equal(order, expected_order)
    # the same float32 minima summed the same way in float64: equal, not just close
    assert e_pt == d_pt[:, order].min(axis=1).sum(dtype=np.float64)
    assert e_ifl == d_ifl[:, order].min(axis=1).sum(dtype=np.float64)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.97])
def test_alpha_similarity_is_the_blockwise_similarity_bit_for_bit(alpha):
    # the cached full-N stage and the pre-sample scan use `alpha_similarity`; the block-by-block
    # stage builds S from the features: the same bytes, so the strategy never changes a selection
    rng = np.random.default_rng(7)
    feats = {k: rng.normal(size=(45, 6)).astype(np.float32) for k in ("pt", "ifl")}
    d_pt, d_ifl = pairwise_distances(feats["pt"], block=16), pairwise_distances(feats["ifl"], block=16)
    out = np.full_like(d_pt, np.nan)
    S = alpha_similarity(d_pt, d_ifl, alpha, out)
    assert S is out
    blockwise = similarity_from_distance(combined_distances(feats, alpha_combination(alpha), block=16))
    assert S.dtype == blockwise.dtype == np.float32
    assert S.tobytes() == blockwise.tobytes()
