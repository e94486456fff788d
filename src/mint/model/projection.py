"""Seeded random projections of gradient features (docs/design.md section 2, step 4).

One matrix `P` of shape (grad_dim, max(proj_dims)) is shared by every feature kind, so the
projection commutes with the SFT - PT difference. `P` is never materialised whole: for
SmolLM2-135M with LoRA r=8 on q,k,v,o (~0.92M parameters) and 8192 columns it would hold
7.5G entries. Instead it is defined tile by tile:

* the matrix is cut into fixed tiles of TILE_ROWS x TILE_COLS entries (constants of the
  definition, recorded in the feature store's manifest);
* tile (i, j) is drawn by numpy's PCG64 seeded with `SeedSequence(seed, spawn_key=(i, j))`,
  the documented way to derive independent streams, unlike arithmetic seeds such as
  `seed + 1000 * block` which collide across seeds;
* tiles are generated on the CPU and moved to the device of the features, so the same seed
  gives the same matrix on any device, for any batch size and any number of processes.

Several dimensions come from one pass: the projection to `d` uses the first `d` columns of
the matrix for the largest requested dimension, scaled by `1 / sqrt(d)` (so the d-dim
feature is exactly a prefix of the larger one, rescaled). Each tile column block depends
only on (seed, i, j), so the first `d` columns do not depend on which other dimensions were
asked for.

Cost: generating a Rademacher tile is cheap (random bytes + unpackbits, ~0.3 ns per entry);
the matmul dominates. Callers should project many rows at once (the gradient code stacks
the SFT and PT rows of a whole chunk of examples) so each tile is generated once per chunk.
Tiles are kept in memory (on the target device, float32) up to `cache_bytes`; beyond that
they are regenerated for every call, which keeps memory bounded for large adapters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mint.choices import PROJECTIONS as KINDS
from mint.errors import MintError

__all__ = [
    "TILE_ROWS",
    "TILE_COLS",
    "PROJECTION_VERSION",
    "Projector",
    "IdentityProjector",
    "BlockProjector",
    "make_projector",
    "random_tile",
    "dense_matrix",
]

# Constants of the matrix definition: changing them changes every projected feature,
# so they are recorded in manifests together with PROJECTION_VERSION.
TILE_ROWS = 4096
TILE_COLS = 512
PROJECTION_VERSION = 1


def random_tile(seed: int, row_block: int, col_block: int, kind: str = "rademacher",
                rows: int = TILE_ROWS, cols: int = TILE_COLS) -> np.ndarray:
    """Tile (row_block, col_block) of the unscaled matrix, float32, shape (rows, cols).

    Rademacher entries are +-1 from the bits of PCG64 random bytes (bit 0 of byte 0 is
    entry (0, 0), little bit order); Gaussian entries are standard normal. `rows`/`cols`
    may be smaller than the tile to take its top-left corner (the last, partial tiles)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(row_block, col_block))))
    if kind == "rademacher":
        bits = np.frombuffer(rng.bytes(TILE_ROWS * TILE_COLS // 8), dtype=np.uint8)
        tile = np.unpackbits(bits, bitorder="little").astype(np.float32)
        tile *= 2.0
        tile -= 1.0
    elif kind == "gaussian":
        tile = rng.standard_normal(TILE_ROWS * TILE_COLS, dtype=np.float32)
    else:
        raise MintError(f"unknown projection type {kind!r}; use one of {', '.join(KINDS)}")
    tile = tile.reshape(TILE_ROWS, TILE_COLS)
    if rows != TILE_ROWS or cols != TILE_COLS:
        tile = np.ascontiguousarray(tile[:rows, :cols])
    return tile


def dense_matrix(grad_dim: int, proj_dim: int, seed: int, kind: str = "rademacher") -> np.ndarray:
    """The whole unscaled (grad_dim, proj_dim) matrix, for tests and small cases only."""
    out = np.empty((grad_dim, proj_dim), dtype=np.float32)
    for i in range(math.ceil(grad_dim / TILE_ROWS)):
        r0, r1 = i * TILE_ROWS, min(grad_dim, (i + 1) * TILE_ROWS)
        for j in range(math.ceil(proj_dim / TILE_COLS)):
            c0, c1 = j * TILE_COLS, min(proj_dim, (j + 1) * TILE_COLS)
            out[r0:r1, c0:c1] = random_tile(seed, i, j, kind, r1 - r0, c1 - c0)
    return out


class Projector:
    """Maps feature rows (n, grad_dim) to {dim_key: (n, dim) float32 tensor}."""

    grad_dim: int
    keys: tuple  # dimension keys of the outputs: ints, or "full" for raw features

    def project(self, x: torch.Tensor) -> dict:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


@dataclass
class IdentityProjector(Projector):
    """`proj_dim=None`: keep the raw (preconditioned) gradients."""

    grad_dim: int

    @property
    def keys(self) -> tuple:
        return ("full",)

    def project(self, x: torch.Tensor) -> dict:
        return {"full": x.float()}

    def describe(self) -> dict:
        return {"type": "none", "grad_dim": self.grad_dim}


class BlockProjector(Projector):
    """Tiled seeded projection to one or several dimensions (see the module docstring)."""

    def __init__(self, grad_dim: int, proj_dims, seed: int, *, kind: str = "rademacher",
                 device: str | torch.device = "cpu", cache_bytes: int = 512 << 20):
        dims = sorted({int(d) for d in proj_dims})
        if not dims or dims[0] < 1:
            raise MintError(f"proj_dim must be positive integers, got {list(proj_dims)}")
        if kind not in KINDS:
            raise MintError(f"unknown projection type {kind!r}; use one of {', '.join(KINDS)}")
        self.grad_dim = int(grad_dim)
        self.dims = dims
        self.seed = int(seed)
        self.kind = kind
        self.device = torch.device(device)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._cached_bytes = 0

    @property
    def keys(self) -> tuple:
        return tuple(self.dims)

    def describe(self) -> dict:
        return {"type": self.kind, "grad_dim": self.grad_dim, "proj_dims": self.dims, "seed": self.seed,
                "tile_rows": TILE_ROWS, "tile_cols": TILE_COLS, "version": PROJECTION_VERSION}

    def _tile(self, i: int, j: int, rows: int, cols: int) -> torch.Tensor:
        cached = self._cache.get((i, j))
        if cached is not None:
            return cached
        tile = torch.from_numpy(random_tile(self.seed, i, j, self.kind, rows, cols)).to(self.device)
        nbytes = tile.numel() * 4
        if self._cached_bytes + nbytes <= self.cache_bytes:
            self._cache[(i, j)] = tile
            self._cached_bytes += nbytes
        return tile

    @torch.no_grad()
    def project(self, x: torch.Tensor) -> dict:
        if x.ndim != 2 or x.shape[1] != self.grad_dim:
            raise ValueError(f"expected (n, {self.grad_dim}) features, got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        max_dim = self.dims[-1]
        out = torch.zeros(x.shape[0], max_dim, dtype=torch.float32, device=self.device)
        # Row tiles in a fixed order, so the accumulation order (and the bytes) never depend
        # on how callers batch their rows beyond the rows themselves.
        for i in range(math.ceil(self.grad_dim / TILE_ROWS)):
            r0, r1 = i * TILE_ROWS, min(self.grad_dim, (i + 1) * TILE_ROWS)
            xi = x[:, r0:r1]
            for j in range(math.ceil(max_dim / TILE_COLS)):
                c0, c1 = j * TILE_COLS, min(max_dim, (j + 1) * TILE_COLS)
                out[:, c0:c1].addmm_(xi, self._tile(i, j, r1 - r0, c1 - c0))
        return {d: out[:, :d] / math.sqrt(d) for d in self.dims}


def make_projector(grad_dim: int, proj_dim, seed: int, *, kind: str = "rademacher",
                   device: str | torch.device = "cpu", cache_bytes: int = 512 << 20) -> Projector:
    """`proj_dim` None (raw gradients), an int, or a list of ints (several at once)."""
    if proj_dim is None:
        return IdentityProjector(grad_dim)
    dims = [proj_dim] if isinstance(proj_dim, int) else list(proj_dim)
    if any(d is None for d in dims):
        raise MintError("proj_dim: mix of 'none' and numbers is not supported; run them separately")
    return BlockProjector(grad_dim, dims, seed, kind=kind, device=device, cache_bytes=cache_bytes)
