"""The one E(T) function (`prefix_min_sums`, from a whole matrix or from the features) against a
plain numpy reference, and the one combine function (`Combination.apply`) on blocks and on row
chunks of whole matrices."""
from __future__ import annotations

import numpy as np
import pytest

from mint.selection.distances import (
    DistanceColumns,
    alpha_combination,
    coef_combination,
    combine_matrices,
    combined_distances,
    min_distance_sum,
    pairwise_distances,
    prefix_min_sums,
)


def _direct(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return np.linalg.norm(X[:, None, :] - X[None, :, :], axis=2)


def _plain_errors(d: np.ndarray, order: np.ndarray, ks) -> dict[int, float]:
    """`E(order[:k]) = sum_i min_{j in order[:k]} d(i, j)`, written the obvious way."""
    return {k: float(d[:, order[:k]].min(axis=1).sum(dtype=np.float64)) for k in ks}


@pytest.fixture
def points():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(53, 7))
    X[20:23] = X[4]  # duplicates: distance 0 to more than themselves
    order = rng.permutation(53)[:31]
    return X, order


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_from_matrix_equals_the_plain_reference_exactly(points, dtype):
    X, order = points
    d = pairwise_distances(X.astype(dtype), dtype=dtype, block=8)
    ks = [1, 2, 5, 17, 31]
    got = prefix_min_sums(DistanceColumns.from_matrix(d), order, ks)
    assert list(got) == ks
    # the same minima in d's dtype, summed in float64 the same way: equal, not just close
    assert got == _plain_errors(d, order, ks)
    assert min_distance_sum(d, order[:17]) == got[17]
    assert all(a >= b for a, b in zip(list(got.values()), list(got.values())[1:]))  # more elements, less error


def test_chunking_does_not_change_the_sums(points):
    X, order = points
    d = pairwise_distances(X, dtype=np.float32)
    ks = [3, 10, 31]
    whole = DistanceColumns.from_matrix(d)
    expected = prefix_min_sums(whole, order, ks)
    for chunk in (1, 2, 7, 64):
        source = DistanceColumns(whole.get, whole.n, whole.dtype, chunk)
        assert prefix_min_sums(source, order, ks) == expected


@pytest.mark.parametrize("block", [4, 9, 2048])
def test_from_features_matches_the_direct_formula(points, block):
    X, order = points
    ks = [1, 6, 30, 31]
    direct = _direct(X)
    np.fill_diagonal(direct, 0)
    got64 = prefix_min_sums(DistanceColumns.from_features(X, dtype=np.float64, block=block), order, ks)
    ref = _plain_errors(direct, order, ks)
    assert list(got64) == ks
    for k in ks:
        assert got64[k] == pytest.approx(ref[k], rel=1e-10, abs=1e-9)
    X32 = X.astype(np.float32)
    got32 = prefix_min_sums(DistanceColumns.from_features(X32, dtype=np.float32, block=block), order, ks)
    for k in ks:
        assert got32[k] == pytest.approx(ref[k], rel=1e-5)
    # k = 1: one column, its own row exactly 0 (not sqrt of a rounding error)
    one = DistanceColumns.from_features(X32, dtype=np.float32, block=block).get(order[:1])
    assert one.shape == (53, 1) and one[order[0], 0] == 0


def test_the_two_sources_agree(points):
    X, order = points
    X32 = X.astype(np.float32)
    ks = [2, 31]
    a = prefix_min_sums(DistanceColumns.from_matrix(pairwise_distances(X32)), order, ks)
    b = prefix_min_sums(DistanceColumns.from_features(X32, dtype=np.float32), order, ks)
    assert a.keys() == b.keys()
    for k in ks:
        assert a[k] == pytest.approx(b[k], rel=1e-5)


def test_apply_writes_into_out_and_never_adds_to_it():
    rng = np.random.default_rng(12)
    blocks = {k: rng.random((6, 5)).astype(np.float32) for k in ("sft", "pt", "ifl")}
    for combo in (alpha_combination(0.3), coef_combination((0.5, 0.0, 2.0)), coef_combination((1, 1, 1))):
        fresh = combo.apply(blocks)
        out = np.full((6, 5), 123.0, dtype=np.float32)  # stale contents must not leak in
        assert combo.apply(blocks, out=out) is out
        assert out.tobytes() == fresh.tobytes()
    expected = blocks["pt"] / 0.3 + blocks["ifl"] / (1 - 0.3)
    assert alpha_combination(0.3).apply(blocks).tobytes() == expected.tobytes()


def test_combine_matrices_equals_the_blockwise_matrix_and_returns_its_max():
    rng = np.random.default_rng(13)
    n = 300  # more than one row chunk
    feats = {k: rng.normal(size=(n, 5)).astype(np.float32) for k in ("pt", "ifl")}
    d = {k: pairwise_distances(v, block=64) for k, v in feats.items()}
    combo = alpha_combination(0.9)
    out = np.empty((n, n), dtype=np.float32)
    top = combine_matrices(combo, d, out)
    blockwise = combined_distances(feats, combo, block=64)
    assert out.tobytes() == blockwise.tobytes()
    assert top == blockwise.max()
