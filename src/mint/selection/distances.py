"""Euclidean distances between feature rows, computed in blocks through matrix products.

`d(i, j) = ||f_i - f_j||_2 = sqrt(max(|f_i|^2 + |f_j|^2 - 2 f_i.f_j, 0))`, never through an
N x N x D tensor. Square matrices are built from the upper block triangle and mirrored, which
halves the matrix products and makes the result exactly symmetric with an exactly zero
diagonal; the greedy relies on symmetry to read columns as contiguous rows.

A combined distance `D = sum_K c_K d_K` (or MINT's `d_PT / a + d_IFL / (1 - a)`) is formed
block by block from the features, so only the one N x N matrix the greedy needs is ever held.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Mapping

import numpy as np

__all__ = [
    "Combination",
    "alpha_combination",
    "coef_combination",
    "pairwise_distances",
    "cross_distances",
    "combined_distances",
]

logger = logging.getLogger(__name__)

# Rows per block: a 2048 x 2048 float32 block is 16 MB, large enough for BLAS to run at full
# speed and small enough to keep the working set bounded at any N.
DEFAULT_BLOCK = 2048


@dataclass(frozen=True)
class Combination:
    """How the per-kind distances are combined: `D = sum_K d_K * scale_K` or, for MINT's alpha,
    `D = d_PT / a + d_IFL / (1 - a)` (division kept literal so the float64 results match a plain
    implementation of the paper's formula bit for bit)."""

    kinds: tuple[str, ...]
    factors: tuple[float, ...]
    divide: bool  # True: d / factor, False: d * factor

    def apply(self, blocks: Mapping[str, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        total = out
        for kind, factor in zip(self.kinds, self.factors):
            part = blocks[kind] / factor if self.divide else blocks[kind] * factor
            if total is None:
                total = part
            else:
                np.add(total, part, out=total)
        return total


def alpha_combination(alpha: float) -> Combination:
    return Combination(("pt", "ifl"), (float(alpha), 1.0 - float(alpha)), divide=True)


def coef_combination(coef: tuple[float, float, float]) -> Combination:
    """`c_sft d_SFT + c_pt d_PT + c_ifl d_IFL`, skipping zero coefficients (so the SFT
    distances are only computed when their coefficient is non-zero)."""
    pairs = [(k, float(c)) for k, c in zip(("sft", "pt", "ifl"), coef) if c != 0]
    return Combination(tuple(k for k, _ in pairs), tuple(c for _, c in pairs), divide=False)


def _sq_norms(X: np.ndarray, dtype) -> np.ndarray:
    X = np.asarray(X, dtype=dtype)
    return np.einsum("ij,ij->i", X, X)


def _block_distance(Xa, Xb, na, nb, dtype) -> np.ndarray:
    g = Xa @ Xb.T
    g *= -2
    g += na[:, None]
    g += nb[None, :]
    np.maximum(g, 0, out=g)  # rounding can make a squared distance slightly negative
    np.sqrt(g, out=g)
    return g.astype(dtype, copy=False)


def cross_distances(X: np.ndarray, Y: np.ndarray, *, dtype=np.float32, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """Distances between the rows of X (n, D) and of Y (m, D): an (n, m) array."""
    X = np.asarray(X, dtype=dtype)
    Y = np.asarray(Y, dtype=dtype)
    nx, ny = _sq_norms(X, dtype), _sq_norms(Y, dtype)
    out = np.empty((X.shape[0], Y.shape[0]), dtype=dtype)
    for s in range(0, X.shape[0], block):
        e = min(s + block, X.shape[0])
        out[s:e] = _block_distance(X[s:e], Y, nx[s:e], ny, dtype)
    return out


def _block_pairs(n: int, block: int):
    starts = list(range(0, n, block))
    for bi, s in enumerate(starts):
        for t in starts[bi:]:
            yield s, min(s + block, n), t, min(t + block, n)


def combined_distances(
    features: Mapping[str, np.ndarray],
    combination: Combination,
    *,
    rows: np.ndarray | None = None,
    dtype=np.float32,
    block: int = DEFAULT_BLOCK,
    out: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The symmetric matrix `D = combination(d_K)` over `features[K][rows]` (all rows when
    `rows` is None), built block by block from the upper triangle and mirrored.

    Holds one n x n `dtype` matrix plus a few block-sized temporaries."""
    feats = {}
    for kind in combination.kinds:
        X = np.asarray(features[kind])
        if rows is not None:
            X = X[rows]
        feats[kind] = np.asarray(X, dtype=dtype)
    n = next(iter(feats.values())).shape[0]
    norms = {k: _sq_norms(X, dtype) for k, X in feats.items()}
    if out is None:
        out = np.empty((n, n), dtype=dtype)
    pairs = list(_block_pairs(n, block))
    bar = None
    if progress and len(pairs) > 4:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(pairs), desc="distances", unit="block", leave=False)
    for s, e, t, u in pairs:
        blocks = {k: _block_distance(X[s:e], X[t:u], norms[k][s:e], norms[k][t:u], dtype) for k, X in feats.items()}
        if s == t:
            # self-distance exactly 0, and the diagonal block made exactly symmetric
            for b in blocks.values():
                np.fill_diagonal(b, 0)
        D = combination.apply(blocks)
        if s == t:
            D = np.triu(D)
            D = D + np.triu(D, 1).T
        out[s:e, t:u] = D
        if s != t:
            out[t:u, s:e] = D.T
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return out


def pairwise_distances(X: np.ndarray, *, dtype=np.float32, block: int = DEFAULT_BLOCK) -> np.ndarray:
    """The symmetric (n, n) distance matrix of the rows of X, zero diagonal."""
    return combined_distances({"x": X}, Combination(("x",), (1.0,), divide=False), dtype=dtype, block=block)
