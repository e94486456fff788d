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
* on the CPU tiles come from numpy (the bytes of every store so far); on a GPU each tile is
  drawn on the device itself by a torch generator seeded from the same `SeedSequence`
  (`device_tile`; tiles of DEVICE_TILE_ROWS x DEVICE_TILE_COLS, since a GPU pays per kernel
  launch): another matrix than the CPU's, recorded as `"tiles": "torch-<device type>"`
  in the description (and so in the store manifest, which refuses a resume on the other kind),
  since copying 4 bytes per entry from the host would cost more than the matmul. The same seed
  gives the same matrix for any batch size and any number of processes.

Several dimensions come from one pass: the projection to `d` uses the first `d` columns of
the matrix for the largest requested dimension, scaled by `1 / sqrt(d)` (so the d-dim
feature is exactly a prefix of the larger one, rescaled). Each tile column block depends
only on (seed, i, j), so the first `d` columns do not depend on which other dimensions were
asked for.

Cost: generating a Rademacher tile is cheap (random bytes + unpackbits, ~0.3 ns per entry);
the matmul dominates. Callers should project many rows at once (the gradient code gathers the
rows of several micro-batches, up to a memory budget) so each tile is generated once per call.
Tiles are kept in memory (on the target device, float32) up to `cache_bytes`; beyond that
they are regenerated for every call, which keeps memory bounded for large adapters. At 7-8B
scale (grad_dim ~1e8) the whole matrix is terabytes and is regenerated for every call; there
the sparse projection (`mint.model.sjlt`, `kind="sjlt"`) or trak's CUDA kernel (`kind="trak"`)
is the practical choice (docs/design.md, "Gradient features at 7-8B scale").

Row independence: a row's projection agrees across calls of different sizes to float rounding
(~1e-6 relative), not bytewise: BLAS may choose its kernel and blocking by the row count, with
several threads always and at one thread on some processors (an AVX-512 EPYC, 2026-12; not on
the AVX2 machine this was first measured on). A one-row call is padded to two rows, since BLAS
takes another kernel for a single row. Calls of the same sizes give the same bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mint.choices import PROJECTIONS as KINDS
from mint.errors import MintError

__all__ = [
    "device_tile",
    "tile_seed",
    "DEVICE_TILE_ROWS",
    "DEVICE_TILE_COLS",
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
DEVICE_TILE_ROWS = 1 << 16  # the device tiles' shape (`device_tile`): 512 MiB each
DEVICE_TILE_COLS = 2048
DENSE_KINDS = ("rademacher", "gaussian")  # the kinds of BlockProjector


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


def tile_seed(seed: int, row_block: int, col_block: int) -> int:
    """The 63-bit seed of tile (row_block, col_block) for a torch generator: the first state
    words of `SeedSequence(seed, spawn_key=(i, j))`, the numpy tiles' own derivation."""
    words = np.random.SeedSequence(seed, spawn_key=(row_block, col_block)).generate_state(2, np.uint32)
    return (int(words[0]) | (int(words[1]) << 32)) & ((1 << 63) - 1)


def device_tile(seed: int, row_block: int, col_block: int, kind: str, device, rows: int = DEVICE_TILE_ROWS,
                cols: int = DEVICE_TILE_COLS) -> torch.Tensor:
    """Tile (row_block, col_block) of the device matrix (DEVICE_TILE_ROWS x DEVICE_TILE_COLS
    tiles, fewer and larger than the numpy ones: a GPU pays per kernel launch), drawn on `device`
    by a torch generator seeded with `tile_seed`: float32 +-1 (Bernoulli(1/2) * 2 - 1) or
    standard normal, `rows` x DEVICE_TILE_COLS, of which the first `cols` columns (so a smaller
    dimension is a prefix of a larger one, as with numpy; the last row block draws only its rows)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(tile_seed(seed, row_block, col_block))
    if kind == "rademacher":
        tile = torch.empty(rows, DEVICE_TILE_COLS, device=device).bernoulli_(0.5, generator=gen)
        tile.mul_(2.0).sub_(1.0)
    elif kind == "gaussian":
        tile = torch.randn(rows, DEVICE_TILE_COLS, device=device, generator=gen)
    else:
        raise MintError(f"unknown projection type {kind!r}; use one of {', '.join(KINDS)}")
    return tile if cols == DEVICE_TILE_COLS else tile[:, :cols].contiguous()


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
    """Tiled seeded projection to one or several dimensions (see the module docstring).

    `tiles`: "numpy" (the CPU definition, copied to `device`) or "device" (drawn on `device`
    by torch, `device_tile`); "auto" is numpy on the CPU and device tiles elsewhere."""

    def __init__(self, grad_dim: int, proj_dims, seed: int, *, kind: str = "rademacher",
                 device: str | torch.device = "cpu", cache_bytes: int = 512 << 20, tiles: str = "auto"):
        dims = sorted({int(d) for d in proj_dims})
        if not dims or dims[0] < 1:
            raise MintError(f"proj_dim must be positive integers, got {list(proj_dims)}")
        if kind not in DENSE_KINDS:
            raise MintError(f"unknown projection type {kind!r}; use one of {', '.join(KINDS)}")
        if tiles not in ("auto", "numpy", "device"):
            raise ValueError(f"tiles must be auto, numpy or device, got {tiles!r}")
        self.grad_dim = int(grad_dim)
        self.dims = dims
        self.seed = int(seed)
        self.kind = kind
        self.device = torch.device(device)
        self.on_device = tiles == "device" or (tiles == "auto" and self.device.type != "cpu")
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._cached_bytes = 0

    @property
    def keys(self) -> tuple:
        return tuple(self.dims)

    def describe(self) -> dict:
        out = {"type": self.kind, "grad_dim": self.grad_dim, "proj_dims": self.dims, "seed": self.seed,
               "tile_rows": self.tile_rows, "tile_cols": self.tile_cols, "version": PROJECTION_VERSION}
        if self.on_device:  # the numpy tiles keep the description of every earlier store
            out["tiles"] = f"torch-{self.device.type}"
        return out

    @property
    def tile_rows(self) -> int:
        return DEVICE_TILE_ROWS if self.on_device else TILE_ROWS

    @property
    def tile_cols(self) -> int:
        return DEVICE_TILE_COLS if self.on_device else TILE_COLS

    def _tile(self, i: int, j: int, rows: int, cols: int) -> torch.Tensor:
        cached = self._cache.get((i, j))
        if cached is not None:
            return cached
        if self.on_device:
            tile = device_tile(self.seed, i, j, self.kind, self.device, rows, cols)
        else:
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
        n = x.shape[0]
        if n == 1:  # BLAS takes a matrix-vector kernel for one row: pad, so a row's bytes never depend on n
            x = torch.cat([x, torch.zeros_like(x)])
        max_dim, tr, tc = self.dims[-1], self.tile_rows, self.tile_cols
        out = torch.zeros(x.shape[0], max_dim, dtype=torch.float32, device=self.device)
        # Row tiles in a fixed order, so the accumulation order (and the bytes) never depend
        # on how callers batch their rows beyond the rows themselves.
        for i in range(math.ceil(self.grad_dim / tr)):
            r0, r1 = i * tr, min(self.grad_dim, (i + 1) * tr)
            xi = x[:, r0:r1]
            for j in range(math.ceil(max_dim / tc)):
                c0, c1 = j * tc, min(max_dim, (j + 1) * tc)
                out[:, c0:c1].addmm_(xi, self._tile(i, j, r1 - r0, c1 - c0))
        return {d: out[:n, :d] / math.sqrt(d) for d in self.dims}


def make_projector(grad_dim: int, proj_dim, seed: int, *, kind: str = "rademacher",
                   device: str | torch.device = "cpu", cache_bytes: int = 512 << 20, sjlt_s: int = 2) -> Projector:
    """`proj_dim` None (raw gradients), an int, or a list of ints (several at once).

    kind: rademacher | gaussian (dense tiles), sjlt (sparse, `sjlt_s` entries per coordinate,
    `mint.model.sjlt`), trak (trak's CUDA kernel when `traker[fast]` and a GPU are there, else
    the rademacher tiles, logged; `mint.model.trak_projector`)."""
    if kind not in KINDS:
        raise MintError(f"unknown projection type {kind!r}; use one of {', '.join(KINDS)}")
    if proj_dim is None:
        return IdentityProjector(grad_dim)
    dims = [proj_dim] if isinstance(proj_dim, int) else list(proj_dim)
    if any(d is None for d in dims):
        raise MintError("proj_dim: mix of 'none' and numbers is not supported; run them separately")
    if kind == "sjlt":
        from mint.model.sjlt import SparseProjector

        return SparseProjector(grad_dim, dims, seed, s=sjlt_s, device=device, cache_bytes=cache_bytes)
    if kind == "trak":
        from mint.model.trak_projector import trak_or_dense

        return trak_or_dense(grad_dim, dims, seed, device=device, cache_bytes=cache_bytes)
    return BlockProjector(grad_dim, dims, seed, kind=kind, device=device, cache_bytes=cache_bytes)
