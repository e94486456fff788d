"""Sparse Johnson-Lindenstrauss projection (`kind="sjlt"`, docs/design.md section 2, step 4).

Each gradient coordinate `i` goes to `s` output coordinates with seeded signs, one in each of
`s` contiguous blocks of the output (the block construction of Kane and Nelson, "Sparser
Johnson-Lindenstrauss Transforms", 2014; `s = 1` is CountSketch):

    y[b_k + h_k(i)] += sign_k(i) * x[i] / sqrt(s),   k = 0 .. s-1,

where block k covers [b_k, b_{k+1}) with b_k = k * D // s and h_k(i) is uniform on the block.
E ||y||^2 = ||x||^2 for every x, and since the map is linear it commutes with SFT - PT. Cost:
O(grad_dim * s) additions per row, no matrix: at grad_dim 109M (an 8B model with LoRA r=128)
and s = 2 about 0.6 s per row on one CPU thread, where the dense 109M x 8192 matrix would
have to be generated (894G entries) for every call.

The hashes are defined chunk by chunk: in chunk c (CHUNK coordinates) of dimension D, block k
draws its bucket offsets (`Generator.integers`, int32) from numpy's PCG64 seeded with
`SeedSequence(seed, spawn_key=(D, c, k, 0))` and its sign bits (`Generator.bytes`, little bit
order) from `spawn_key=(D, c, k, 1)`. So
the hashes of a coordinate depend only on (seed, D, s, its chunk), never on the batch, the
device or the number of processes; each dimension of a multi-dimension request has its own
hashes (unlike the dense tiles, a smaller dimension is not a prefix of a larger one).

The sign is folded into the index: a coordinate with sign -1 adds into a second copy of the
output (index + D), and the result is `first half - second half`. One index_add per chunk and
block, reading `x` as it is (no multiply, no sign array), and 4 bytes of cache per coordinate
and block. Hashes are cached on the device up to `cache_bytes` (109M coordinates at s = 2 take
872 MB), regenerated per call beyond that (~1 s per 109M coordinates and block on a CPU).

Determinism: on the CPU `index_add_` adds in index order, so the same seed gives the same
bytes for any batch of rows. On CUDA `index_add_` uses atomic adds (order-dependent float
sums), so the CUDA path uses `index_put_(accumulate=True)`, which sorts the indices first and
is deterministic.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mint.errors import MintError

__all__ = ["SparseProjector", "sjlt_hashes", "sparse_matrix", "CHUNK", "SJLT_VERSION"]

CHUNK = 1 << 20  # coordinates per hash chunk: a constant of the definition (recorded in manifests)
SJLT_VERSION = 1


def _blocks(dim: int, s: int) -> list[int]:
    return [k * dim // s for k in range(s + 1)]


def _stream(seed: int, dim: int, chunk: int, k: int, what: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(dim, chunk, k, what))))


def sjlt_hashes(seed: int, dim: int, s: int, chunk: int, size: int = CHUNK) -> np.ndarray:
    """(s, size) int32 folded indices of the coordinates chunk*CHUNK + [0, size): bucket
    `b_k + h_k(i)` for sign +1, that plus `dim` for sign -1. Each block k draws its buckets and
    its sign bits from streams of their own, element by element, so a partial chunk (the last
    one) is the prefix of the full chunk: a coordinate's hashes never depend on grad_dim."""
    bounds = _blocks(dim, s)
    out = np.empty((s, size), dtype=np.int32)
    for k in range(s):
        out[k] = _stream(seed, dim, chunk, k, 0).integers(0, bounds[k + 1] - bounds[k], size=size, dtype=np.int32)
        out[k] += bounds[k]
        sign_bytes = _stream(seed, dim, chunk, k, 1).bytes(4 * math.ceil(size / 32))  # whole 32-bit words
        negative = np.unpackbits(np.frombuffer(sign_bytes, dtype=np.uint8), bitorder="little")[:size]
        out[k] += negative.astype(np.int32) * dim
    return out


def sparse_matrix(grad_dim: int, dim: int, seed: int, s: int) -> np.ndarray:
    """The explicit (grad_dim, dim) float64 matrix of the same hashes, scaled: for tests only."""
    out = np.zeros((grad_dim, dim), dtype=np.float64)
    for c in range(math.ceil(grad_dim / CHUNK)):
        c0, c1 = c * CHUNK, min(grad_dim, (c + 1) * CHUNK)
        folded = sjlt_hashes(seed, dim, s, c, c1 - c0)
        rows = np.arange(c0, c1)
        for k in range(s):
            sign = np.where(folded[k] >= dim, -1.0, 1.0)
            np.add.at(out, (rows, folded[k] % dim), sign)
    return out / math.sqrt(s)


class SparseProjector:
    """Sparse JL projection of (n, grad_dim) rows to {dim: (n, dim) float32} (module docstring).

    Same interface as `mint.model.projection.BlockProjector` (`keys`, `project`, `describe`)."""

    def __init__(self, grad_dim: int, proj_dims, seed: int, *, s: int = 2, device: str | torch.device = "cpu",
                 cache_bytes: int = 512 << 20):
        dims = sorted({int(d) for d in proj_dims})
        if not dims or dims[0] < 1:
            raise MintError(f"proj_dim must be positive integers, got {list(proj_dims)}")
        if not isinstance(s, int) or s < 1 or s > dims[0]:
            raise MintError(f"grads.sjlt_s (non-zeros per coordinate of the sparse projection) must be an integer "
                            f"in [1, {dims[0]}] (the smallest proj_dim), got {s!r}; 2 is the default")
        self.grad_dim, self.dims, self.seed, self.s = int(grad_dim), dims, int(seed), s
        self.device = torch.device(device)
        self.cache_bytes = int(cache_bytes)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}
        self._cached_bytes = 0

    @property
    def keys(self) -> tuple:
        return tuple(self.dims)

    def describe(self) -> dict:
        return {"type": "sjlt", "grad_dim": self.grad_dim, "proj_dims": self.dims, "seed": self.seed, "s": self.s,
                "chunk": CHUNK, "version": SJLT_VERSION}

    def _hashes(self, dim: int, c: int, size: int) -> torch.Tensor:
        cached = self._cache.get((dim, c))
        if cached is not None:
            return cached
        folded = torch.from_numpy(sjlt_hashes(self.seed, dim, self.s, c, size)).to(self.device)
        if self.device.type == "cuda":
            folded = folded.long()  # index_put_ takes int64 indices
        nbytes = folded.numel() * folded.element_size()
        if self._cached_bytes + nbytes <= self.cache_bytes:
            self._cache[(dim, c)] = folded
            self._cached_bytes += nbytes
        return folded

    @torch.no_grad()
    def project(self, x: torch.Tensor) -> dict:
        if x.ndim != 2 or x.shape[1] != self.grad_dim:
            raise ValueError(f"expected (n, {self.grad_dim}) features, got {tuple(x.shape)}")
        x = x.to(self.device, torch.float32)
        n = x.shape[0]
        out = {}
        for dim in self.dims:
            acc = torch.zeros(n, 2 * dim, dtype=torch.float32, device=self.device)  # [+ half | - half]
            for c in range(math.ceil(self.grad_dim / CHUNK)):
                c0, c1 = c * CHUNK, min(self.grad_dim, (c + 1) * CHUNK)
                folded = self._hashes(dim, c, c1 - c0)
                for k in range(self.s):
                    _scatter_add(acc, folded[k], x[:, c0:c1])
            out[dim] = (acc[:, :dim] - acc[:, dim:]) / math.sqrt(self.s)
        return out


def _scatter_add(acc: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """acc[r, index[j]] += src[r, j], in a fixed order on every device (module docstring)."""
    if acc.device.type == "cuda":
        rows = torch.arange(acc.shape[0], device=acc.device)[:, None].expand(-1, index.numel())
        acc.index_put_((rows, index[None, :].expand(acc.shape[0], -1)), src, accumulate=True)
        return
    for r in range(acc.shape[0]):  # one row at a time: a contiguous output, and each row's bytes never depend on n
        acc[r].index_add_(0, index, src[r])
