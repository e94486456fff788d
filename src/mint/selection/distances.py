"""Euclidean distances between feature rows, computed in blocks through matrix products.

`d(i, j) = ||f_i - f_j||_2 = sqrt(max(|f_i|^2 + |f_j|^2 - 2 f_i.f_j, 0))`, never through an
N x N x D tensor. Square matrices are built from the upper block triangle and mirrored, which
halves the matrix products and makes the result exactly symmetric with an exactly zero
diagonal; the greedy relies on symmetry to read columns as contiguous rows.

A combined distance `D = sum_K c_K d_K` (or MINT's `d_PT / a + d_IFL / (1 - a)`) is formed by
one function, `Combination.apply`: block by block from the features (`combined_distances`, so
only the one N x N matrix the greedy needs is ever held) or row chunk by row chunk from whole
per-kind matrices (`combine_matrices`).

The error of a subset, `E(T) = sum_i min_{j in T} d(i, j)`, is computed by one function,
`prefix_min_sums`, for every prefix of a greedy order at once; the distance columns it reads
come from a `DistanceColumns` source: a whole matrix or the features themselves.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "Combination",
    "alpha_combination",
    "coef_combination",
    "pairwise_distances",
    "cross_distances",
    "combined_distances",
    "combine_matrices",
    "DistanceColumns",
    "prefix_min_sums",
    "min_distance_sum",
]

logger = logging.getLogger(__name__)

# Rows per block: a 2048 x 2048 float32 block is 16 MB, large enough for BLAS to run at full
# speed and small enough to keep the working set bounded at any N.
DEFAULT_BLOCK = 2048
# Rows per chunk when combining whole matrices: a chunk stays in cache while its maximum is taken.
_ROW_CHUNK = 256
# Elements per gathered chunk of a whole matrix in `prefix_min_sums` (16 MB of float32).
_GATHER_ELEMS = 1 << 22


@dataclass(frozen=True)
class Combination:
    """How the per-kind distances are combined: `D = sum_K d_K * scale_K` or, for MINT's alpha,
    `D = d_PT / a + d_IFL / (1 - a)` (division kept literal so the float64 results match a plain
    implementation of the paper's formula bit for bit)."""

    kinds: tuple[str, ...]
    factors: tuple[float, ...]
    divide: bool  # True: d / factor, False: d * factor

    def apply(self, blocks: Mapping[str, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
        """`D` from same-shaped per-kind distance arrays, written into `out` when given (which may
        be a view, e.g. a row chunk of a larger matrix); the first kind is written, the others added."""
        op = np.divide if self.divide else np.multiply
        for i, (kind, factor) in enumerate(zip(self.kinds, self.factors)):
            if i == 0:
                out = op(blocks[kind], factor, out=out)  # out=None: a new array
            else:
                np.add(out, op(blocks[kind], factor), out=out)
        return out


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


def combine_matrices(combination: Combination, matrices: Mapping[str, np.ndarray], out: np.ndarray) -> float:
    """`combination` of whole per-kind (n, n) matrices into `out`, row chunk by row chunk (no
    second n x n temporary). Returns `max(out)`, taken while each chunk is still in cache, for
    `facility.similarity_from_distance(out, top=...)`."""
    n = out.shape[0]
    top = -np.inf
    for s in range(0, n, _ROW_CHUNK):
        e = min(s + _ROW_CHUNK, n)
        chunk = combination.apply({k: matrices[k][s:e] for k in combination.kinds}, out=out[s:e])
        top = max(top, chunk.max())
    return top


# ----------------------------------------------------------------------------- E(T)


@dataclass(frozen=True)
class DistanceColumns:
    """Where `prefix_min_sums` reads distances from: `get(cols)` returns the (n, len(cols))
    array `d(i, cols[c])` (self-distances exactly 0), for at most `chunk` columns at a time."""

    get: Callable[[np.ndarray], np.ndarray]
    n: int
    dtype: np.dtype
    chunk: int

    @classmethod
    def from_matrix(cls, d: np.ndarray) -> "DistanceColumns":
        """A whole symmetric matrix: column j is read as the contiguous row d[j]."""
        n = d.shape[0]
        return cls(lambda cols: d[cols].T, n, d.dtype, max(1, _GATHER_ELEMS // max(n, 1)))

    @classmethod
    def from_features(cls, X: np.ndarray, *, dtype, block: int = DEFAULT_BLOCK) -> "DistanceColumns":
        """Distances computed from the rows of X, `block` columns at a time (never n x n)."""

        def get(cols: np.ndarray) -> np.ndarray:
            d = cross_distances(X, np.asarray(X[cols]), dtype=dtype, block=block)
            d[cols, np.arange(len(cols))] = 0  # self-distance exactly 0, as in the n x n matrices
            return d

        return cls(get, X.shape[0], np.dtype(dtype), block)


def prefix_min_sums(source: DistanceColumns, order: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """`E(order[:k]) = sum_i min_{j in order[:k]} d(i, j)` for every k in `ks`, in one pass over
    chunks of the order. The running minimum is kept in the source's dtype (min is exact, so the
    chunking does not change it); each sum is accumulated in float64."""
    wanted = set(int(k) for k in ks)
    best = np.full(source.n, np.inf, dtype=source.dtype)
    out: dict[int, float] = {}
    # chunk boundaries at every wanted k, so each sum is taken exactly after its prefix
    bounds = sorted(set(range(0, max(wanted), source.chunk)) | wanted | {0})
    for s, e in zip(bounds[:-1], bounds[1:]):
        np.minimum(best, source.get(order[s:e]).min(axis=1), out=best)
        if e in wanted:
            out[e] = float(best.sum(dtype=np.float64))
    return out


def min_distance_sum(d: np.ndarray, selected: np.ndarray) -> float:
    """`E(T)` of one subset from a whole symmetric matrix, float64."""
    selected = np.asarray(selected)
    return prefix_min_sums(DistanceColumns.from_matrix(d), selected, [len(selected)])[len(selected)]
