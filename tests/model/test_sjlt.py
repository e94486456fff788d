"""The sparse JL projection: the explicit sparse matrix of the same hashes, norms in
expectation (a statistical test a broken hash fails), linearity (SFT - PT), determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mint.errors import MintError
from mint.model.projection import make_projector
from mint.model.sjlt import CHUNK, SparseProjector, sjlt_hashes, sparse_matrix


def _rows(n, dim, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


@pytest.mark.parametrize("s", [1, 2, 3])
def test_sjlt_equals_the_explicit_sparse_matrix_of_its_hashes(s):
    grad_dim, dims = 3000, [64, 100]
    x = _rows(4, grad_dim)
    proj = make_projector(grad_dim, dims, seed=4, kind="sjlt", sjlt_s=s)
    assert isinstance(proj, SparseProjector) and proj.keys == (64, 100)
    out = proj.project(x)
    for d in dims:
        matrix = sparse_matrix(grad_dim, d, seed=4, s=s)
        # s non-zeros of +-1/sqrt(s) per coordinate, one in each of the s output blocks
        assert (np.count_nonzero(matrix, axis=1) == s).all()
        assert np.allclose(np.abs(matrix[matrix != 0]), 1 / math.sqrt(s))
        blocks = [k * d // s for k in range(s + 1)]
        cols = np.sort(np.nonzero(matrix)[1].reshape(grad_dim, s), axis=1)
        for k in range(s):
            assert ((cols[:, k] >= blocks[k]) & (cols[:, k] < blocks[k + 1])).all()
        np.testing.assert_allclose(out[d].numpy(), x.double().numpy() @ matrix, rtol=1e-5, atol=1e-5)


def test_partial_last_chunk_is_a_prefix_of_the_full_chunk():
    full = sjlt_hashes(9, 256, 2, chunk=1)
    assert full.shape == (2, CHUNK) and full.dtype == np.int32
    for size in (1, 1000, 4097):
        assert np.array_equal(sjlt_hashes(9, 256, 2, chunk=1, size=size), full[:, :size])
    assert not np.array_equal(sjlt_hashes(9, 256, 2, chunk=0), full)
    assert not np.array_equal(sjlt_hashes(10, 256, 2, chunk=1), full)
    assert full.min() >= 0 and full.max() < 2 * 256  # folded: bucket, or bucket + dim for a minus sign


def _norm_ratios(x: torch.Tensor, dim: int, s: int, seeds: range) -> np.ndarray:
    return np.array([(SparseProjector(x.shape[1], [dim], seed, s=s).project(x)[dim].norm() / x.norm()).item() ** 2
                     for seed in seeds])


@pytest.mark.parametrize("s", [1, 4])
def test_norms_preserved_in_expectation(s):
    """E ||Px||^2 = ||x||^2 over the hashes, Var = 2 (||x||^4 - sum x_i^4) / D (s = 1) and at most
    that for s > 1. A vector with a large mean makes a sign bug show (all signs + gives a ratio
    near 1 + ||x||_1^2 / (D ||x||^2)), a skewed bucket hash doubles the variance."""
    dim, n_seeds = 128, 300
    x = (_rows(1, 4000, seed=1) + 1.0)  # mean 1: cross terms matter unless the signs are random
    ratios = _norm_ratios(x, dim, s, range(n_seeds))
    v = x.double().numpy()[0]
    var_s1 = 2 * ((v ** 2).sum() ** 2 - (v ** 4).sum()) / dim / (v ** 2).sum() ** 2
    sem = math.sqrt(var_s1 / n_seeds)
    assert abs(ratios.mean() - 1) < 4 * sem, (ratios.mean(), sem)
    assert ratios.var() < 1.4 * var_s1, (ratios.var(), var_s1)
    if s == 1:
        assert ratios.var() > 0.6 * var_s1, (ratios.var(), var_s1)


def test_a_broken_hash_fails_the_norm_test(monkeypatch):
    """The same statistics with the signs dropped, and with the buckets squeezed into half of
    the output: each is caught (so the test above can fail)."""
    import mint.model.sjlt as sjlt

    dim, n_seeds = 128, 300
    x = _rows(1, 4000, seed=1) + 1.0
    v = x.double().numpy()[0]
    var_s1 = 2 * ((v ** 2).sum() ** 2 - (v ** 4).sum()) / dim / (v ** 2).sum() ** 2
    real = sjlt.sjlt_hashes
    monkeypatch.setattr(sjlt, "sjlt_hashes", lambda seed, d, s, chunk, size=CHUNK: real(seed, d, s, chunk, size) % d)
    no_signs = _norm_ratios(x, dim, 1, range(n_seeds))
    assert abs(no_signs.mean() - 1) > 4 * math.sqrt(var_s1 / n_seeds)
    monkeypatch.setattr(sjlt, "sjlt_hashes", lambda seed, d, s, chunk, size=CHUNK:
                        (real(seed, d, s, chunk, size) % d) // 2 + d * (real(seed, d, s, chunk, size) >= d))
    half = _norm_ratios(x, dim, 1, range(n_seeds))
    assert half.var() > 1.4 * var_s1


def test_commutes_with_the_sft_minus_pt_difference_and_is_deterministic():
    grad_dim = 2 * CHUNK + 123  # three chunks, the last one partial
    sft, pt = _rows(3, grad_dim, seed=2), _rows(3, grad_dim, seed=3)
    proj = SparseProjector(grad_dim, [256], seed=0, s=2, cache_bytes=0)
    a, b, diff = proj.project(sft)[256], proj.project(pt)[256], proj.project(sft - pt)[256]
    # linear up to float32 rounding of sums of ~16,000 terms per bucket
    assert ((a - b - diff).norm(dim=1) / diff.norm(dim=1)).max().item() < 1e-5
    cached = SparseProjector(grad_dim, [256], seed=0, s=2)
    assert torch.equal(cached.project(sft)[256], a) and torch.equal(cached.project(sft)[256], a)
    # a row's bytes do not depend on the other rows of the call
    assert torch.equal(proj.project(sft[1:2])[256][0], a[1])
    assert not torch.allclose(SparseProjector(grad_dim, [256], seed=1, s=2).project(sft)[256], a)


def test_describe_and_bad_settings():
    proj = make_projector(500, 64, seed=3, kind="sjlt", sjlt_s=4)
    assert proj.describe() == {"type": "sjlt", "grad_dim": 500, "proj_dims": [64], "seed": 3, "s": 4,
                               "chunk": CHUNK, "version": 1}
    with pytest.raises(MintError, match="grads.sjlt_s"):
        make_projector(500, 64, seed=3, kind="sjlt", sjlt_s=0)
    with pytest.raises(MintError, match="grads.sjlt_s"):
        make_projector(500, [8, 64], seed=3, kind="sjlt", sjlt_s=9)
    with pytest.raises(ValueError, match="expected"):
        proj.project(torch.zeros(2, 499))
