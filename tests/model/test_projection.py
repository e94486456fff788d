"""Projection: seeded tiles, agreement with an explicit dense matrix, batch-size
independence, prefix property of several dimensions, JL inner-product preservation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mint.errors import MintError
from mint.model.projection import (TILE_COLS, TILE_ROWS, BlockProjector, dense_matrix, make_projector,
                             random_tile)


def _features(n, dim, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_block_projection_equals_dense_matrix(kind):
    # grad_dim and proj_dim span several tiles, with partial last tiles in both directions.
    grad_dim, dim = TILE_ROWS + 100, TILE_COLS + 40
    x = _features(5, grad_dim)
    proj = BlockProjector(grad_dim, [dim], seed=3, kind=kind)
    dense = torch.from_numpy(dense_matrix(grad_dim, dim, seed=3, kind=kind)).double()
    expected = (x.double() @ dense) / math.sqrt(dim)
    got = proj.project(x)[dim]
    assert got.dtype == torch.float32 and got.shape == (5, dim)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-4)
    if kind == "rademacher":
        assert set(np.unique(dense.numpy())) == {-1.0, 1.0}


def test_same_seed_same_matrix_any_batch_size_and_cache():
    grad_dim, dim = 3000, 700
    x = _features(9, grad_dim)
    cached = BlockProjector(grad_dim, [dim], seed=11)  # fits the default cache
    uncached = BlockProjector(grad_dim, [dim], seed=11, cache_bytes=0)
    full = cached.project(x)[dim]
    again = cached.project(x)[dim]  # from cached tiles
    rows = torch.cat([uncached.project(x[i:i + 2])[dim] for i in range(0, 9, 2)])
    assert torch.equal(full, again)
    # the matrix is the same; only BLAS rounding may differ with the number of rows
    torch.testing.assert_close(rows, full, rtol=1e-5, atol=1e-5)
    other = BlockProjector(grad_dim, [dim], seed=12).project(x)[dim]
    assert not torch.allclose(other, full)


def test_tiles_depend_only_on_seed_and_position():
    a = random_tile(5, 2, 1)
    assert np.array_equal(a, random_tile(5, 2, 1))
    assert not np.array_equal(a, random_tile(5, 1, 2))
    assert not np.array_equal(a, random_tile(6, 2, 1))
    # a partial tile is the corner of the full one
    assert np.array_equal(random_tile(5, 2, 1, rows=10, cols=7), a[:10, :7])


def test_several_dims_are_rescaled_prefixes():
    grad_dim = 1000
    x = _features(4, grad_dim)
    both = BlockProjector(grad_dim, [64, 1024], seed=0).project(x)
    alone = BlockProjector(grad_dim, [64], seed=0).project(x)[64]
    torch.testing.assert_close(both[64], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[64], both[1024][:, :64] * math.sqrt(1024 / 64), rtol=1e-5, atol=1e-5)


def test_inner_products_preserved_within_jl_tolerance():
    grad_dim, dim, n = 5000, 2048, 12
    x = _features(n, grad_dim, seed=1)
    x = x / x.norm(dim=1, keepdim=True)
    y = BlockProjector(grad_dim, [dim], seed=4).project(x)[dim].double()
    gram, gram_p = (x.double() @ x.double().T), (y @ y.T)
    # JL: each inner product of unit vectors moves by O(1/sqrt(dim)) ~ 0.022; allow 6 sigma.
    assert (gram - gram_p).abs().max().item() < 6 / math.sqrt(dim)
    norms = y.norm(dim=1)
    assert ((norms - 1).abs() < 0.15).all()


def test_one_row_gives_the_row_it_has_among_others():
    # BLAS multiplies a single row with another kernel: the projector pads it to two. Other row
    # counts agree to float rounding (on some processors BLAS picks kernels by the row count even
    # at one thread, e.g. this AVX-512 EPYC)
    torch.set_num_threads(1)
    x = _features(6, 5000)
    proj = BlockProjector(5000, [64, 700], seed=2)
    together = proj.project(x)
    for i in range(6):
        alone = proj.project(x[i:i + 1])
        for d in (64, 700):
            scale = float(together[d].abs().max())
            torch.testing.assert_close(alone[d][0], together[d][i], rtol=1e-5, atol=1e-6 * scale)


def test_device_tiles_are_deterministic_and_seeded():
    """The torch-generated tiles (the GPU path, run here with the CPU generator): the same seed
    gives the same bytes, partial tiles are corners, and another seed or position another tile."""
    from mint.model.projection import device_tile, tile_seed

    a = device_tile(5, 2, 1, "rademacher", "cpu", rows=1000)
    assert a.shape == (1000, 2048) and torch.equal(a, device_tile(5, 2, 1, "rademacher", "cpu", rows=1000))
    assert set(a.unique().tolist()) == {-1.0, 1.0} and abs(a.mean().item()) < 0.01
    assert not torch.equal(a, device_tile(5, 1, 2, "rademacher", "cpu", rows=1000))
    assert not torch.equal(a, device_tile(6, 2, 1, "rademacher", "cpu", rows=1000))
    assert torch.equal(device_tile(5, 2, 1, "rademacher", "cpu", rows=1000, cols=7), a[:, :7])
    gauss = device_tile(5, 2, 1, "gaussian", "cpu", rows=1000)
    assert abs(gauss.std().item() - 1) < 0.01
    assert tile_seed(5, 2, 1) == tile_seed(5, 2, 1) != tile_seed(5, 1, 2)
    x = _features(4, 3000)
    on_dev = BlockProjector(3000, [100, 2100], seed=7, tiles="device")
    again = BlockProjector(3000, [100, 2100], seed=7, tiles="device", cache_bytes=0)
    numpy_tiles = BlockProjector(3000, [100, 2100], seed=7)
    assert on_dev.describe()["tiles"] == "torch-cpu" and "tiles" not in numpy_tiles.describe()
    assert on_dev.describe()["tile_rows"] == 1 << 16 and numpy_tiles.describe()["tile_rows"] == TILE_ROWS
    first, second = on_dev.project(x), again.project(x)
    assert all(torch.equal(first[d], second[d]) for d in (100, 2100))
    assert not torch.allclose(first[2100], numpy_tiles.project(x)[2100])
    # the prefix property holds for device tiles too; a projection by the explicit tiles agrees
    torch.testing.assert_close(first[100], first[2100][:, :100] * math.sqrt(2100 / 100), rtol=1e-5, atol=1e-5)
    matrix = torch.cat([device_tile(7, 0, 0, "rademacher", "cpu", rows=3000),
                        device_tile(7, 0, 1, "rademacher", "cpu", rows=3000, cols=52)], dim=1)
    torch.testing.assert_close(first[2100], x @ matrix / math.sqrt(2100), rtol=1e-4, atol=1e-4)


def test_identity_and_bad_settings():
    x = _features(3, 10)
    ident = make_projector(10, None, seed=0)
    assert ident.keys == ("full",) and torch.equal(ident.project(x)["full"], x)
    assert make_projector(10, [8, 4], seed=0).keys == (4, 8)
    with pytest.raises(MintError, match=r"proj_dim must be positive integers, got \[0\]"):
        make_projector(10, [0], seed=0)
    with pytest.raises(MintError, match="unknown projection type 'sparse'"):
        make_projector(10, 8, seed=0, kind="sparse")
    with pytest.raises(MintError, match="mix of 'none' and numbers"):
        make_projector(10, [8, None], seed=0)
