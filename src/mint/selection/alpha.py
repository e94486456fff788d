"""Choosing MINT's alpha: the grid scan with plateau detection (the reference's rule), a
step-aware plateau variant, and BRIEF's golden-section search.

All of them evaluate alpha on a pre-sample: the greedy on `S_a = max(D_a) - D_a` with
`D_a = d_PT / a + d_IFL / (1 - a)` (`alpha_similarity`), then `E_PT` and `E_IFL` of the chosen
subset on the pre-sample (`distances.min_distance_sum`). The two pre-sample distance matrices
are computed once and shared by every alpha (and, through fork, by every worker process).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mint.selection.distances import alpha_combination, combine_matrices, min_distance_sum
from mint.selection.engine import kernels, resolve_engine, sum_chunk, warm_up
from mint.selection.facility import lazy_greedy, similarity_from_distance
from mint.selection.workers import in_workers, resolve_jobs

__all__ = [
    "alpha_grid",
    "detect_plateau",
    "golden_search",
    "AlphaCurve",
    "alpha_similarity",
    "evaluate_alpha",
    "scan_alphas",
]

logger = logging.getLogger(__name__)

# First plateau start at or above this alpha is preferred (the reference's choice).
PLATEAU_MIN_ALPHA = 0.95


def alpha_grid() -> np.ndarray:
    """The reference's 174-point grid: 0.10, 0.11, ..., 0.89 (step 0.01); then from 0.90 the
    step is halved at every step (0.005, 0.0025, 0.00125) down to a floor of 0.001, each new
    point clipped at 0.999, until 0.999 is reached. So 0.90 itself is not a grid point, the
    last regular point is 0.99875 and the end point is 0.999. Rounded to 6 decimals."""
    points = [round(0.10 + 0.01 * i, 6) for i in range(80)]  # 0.10 ... 0.89
    a, step = 0.90, 0.01
    while a < 0.999:
        step = max(step / 2, 0.001)
        a = round(a + step, 6)
        points.append(min(a, 0.999))
    return np.array(sorted(set(points)), dtype=np.float64)


@dataclass(frozen=True)
class Plateau:
    index: int  # grid index of the chosen alpha
    sigma: float
    diffs: np.ndarray  # the (possibly step-scaled) |diff E_IFL| the test used
    starts: np.ndarray  # every plateau start (grid indices)
    reason: str


def detect_plateau(
    alphas: np.ndarray, e_ifl: np.ndarray, *, scaled: bool = False, min_alpha: float = PLATEAU_MIN_ALPHA
) -> Plateau:
    """The plateau of `E_IFL` along the grid (docs/design.md section 3).

    `diffs[i] = |E_IFL[i+1] - E_IFL[i]|` (divided by the grid step `alpha[i+1] - alpha[i]`
    when `scaled`), `sigma = max(1.4826 * MAD(diffs), 1e-8)`; grid index i+1 starts a plateau
    when diffs[i], diffs[i+1], diffs[i+2] are all <= sigma. Choose the first start with
    alpha >= min_alpha, else the first start, else the last grid point.

    Why `scaled`: the grid step shrinks 10x above 0.9, so raw differences there are ~10x
    smaller and the unscaled test finds a "plateau" just above 0.95 for almost any data."""
    alphas = np.asarray(alphas, dtype=np.float64)
    e_ifl = np.asarray(e_ifl, dtype=np.float64)
    diffs = np.abs(np.diff(e_ifl))
    if scaled:
        diffs = diffs / np.diff(alphas)
    if len(diffs) == 0:
        return Plateau(len(alphas) - 1, 1e-8, diffs, np.zeros(0, np.int64), "single point")
    mad = np.median(np.abs(diffs - np.median(diffs)))
    sigma = max(1.4826 * float(mad), 1e-8)
    small = diffs <= sigma
    starts = np.array([i + 1 for i in range(len(diffs) - 2) if small[i] and small[i + 1] and small[i + 2]], dtype=np.int64)
    high = [s for s in starts if alphas[s] >= min_alpha]
    if high:
        return Plateau(int(high[0]), sigma, diffs, starts, f"first plateau start with alpha >= {min_alpha}")
    if len(starts):
        return Plateau(int(starts[0]), sigma, diffs, starts, f"no plateau at alpha >= {min_alpha}; first plateau start")
    return Plateau(len(alphas) - 1, sigma, diffs, starts, "no plateau; last grid point")


def golden_search(
    f: Callable[[float], float], lo: float = 0.001, hi: float = 0.999, *, tol: float = 1e-3, max_iter: int = 40
) -> tuple[float, list[tuple[float, float]]]:
    """Golden-section search for the minimum of `f` on [lo, hi] (BRIEF's alpha search).
    Returns the best evaluated point (ties: smaller alpha) and every (alpha, f) evaluated,
    in evaluation order."""
    inv_phi = (math.sqrt(5) - 1) / 2
    seen: dict[float, float] = {}

    def value(x: float) -> float:
        x = round(x, 6)  # same rounding as the grid, so points are reproducible and printable
        if x not in seen:
            seen[x] = float(f(x))
        return seen[x]

    a, b = lo, hi
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = value(c), value(d)
    for _ in range(max_iter):
        if b - a <= tol:
            break
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = value(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = value(d)
    best = min(seen.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return best, list(seen.items())


@dataclass(frozen=True)
class AlphaCurve:
    """Every evaluated alpha with the pre-sample errors of its subset, sorted by alpha."""

    alpha: np.ndarray
    e_pt: np.ndarray
    e_ifl: np.ndarray
    method: str
    chosen: float
    sigma: float | None = None  # plateau methods only
    diffs: np.ndarray | None = None
    plateau_starts: np.ndarray | None = None
    reason: str = ""
    n_pre: int = 0
    k_pre: int = 0
    extra: dict = field(default_factory=dict)

    def __getitem__(self, key: str) -> np.ndarray:
        return {"alpha": self.alpha, "e_pt": self.e_pt, "e_ifl": self.e_ifl}[key]

    def __len__(self) -> int:
        return len(self.alpha)

    def to_csv(self) -> str:
        lines = ["alpha,e_pt,e_ifl,chosen"]
        for a, p, q in zip(self.alpha, self.e_pt, self.e_ifl):
            lines.append(f"{a:.6f},{float(p)!r},{float(q)!r},{int(a == self.chosen)}")
        return "\n".join(lines) + "\n"


def _compiled(d: np.ndarray, *others: np.ndarray, engine: str) -> bool:
    """Whether the compiled kernels run on these whole matrices (same float32/float64 dtype, C order)."""
    same = all(o.dtype == d.dtype and o.flags.c_contiguous for o in (d, *others))
    return same and d.dtype in (np.float32, np.float64) and resolve_engine(engine, d.shape[0]) == "numba"


def alpha_similarity(d_pt: np.ndarray, d_ifl: np.ndarray, alpha: float, out: np.ndarray,
                     engine: str = "auto") -> np.ndarray:
    """`S_a = max(D_a) - D_a` into `out` from the two whole distance matrices (no second n x n
    temporary); the pre-sample scan and the cached full-N stage both use it."""
    combination = alpha_combination(alpha)
    if _compiled(d_pt, d_ifl, out, engine=engine):
        a, b = (out.dtype.type(f) for f in combination.factors)  # numpy's rounding of a Python float
        kernels(out.dtype).alpha_similarity(d_pt, d_ifl, a, b, out)
        return out
    top = combine_matrices(combination, {"pt": d_pt, "ifl": d_ifl}, out)
    return similarity_from_distance(out, out=out, top=top)


def _min_sum(d: np.ndarray, order: np.ndarray, engine: str) -> float:
    if _compiled(d, engine=engine):
        return float(kernels(d.dtype).prefix_min_sums(d, order, np.array([len(order)], dtype=np.int64), sum_chunk(d.dtype))[0])
    return min_distance_sum(d, order)


def evaluate_alpha(d_pt, d_ifl, alpha: float, k: int, buffer: np.ndarray | None = None, engine: str = "auto"):
    """Greedy on the pre-sample for one alpha; returns (e_pt, e_ifl, order)."""
    if buffer is None:
        buffer = np.empty_like(d_pt)
    S = alpha_similarity(d_pt, d_ifl, alpha, buffer, engine=engine)
    order, _ = lazy_greedy(S, k, symmetric=True, nonnegative=True, engine=engine)
    return _min_sum(d_pt, order, engine), _min_sum(d_ifl, order, engine), order


# Shared with forked workers: set just before the pool starts, read-only in the children.
_SHARED: dict = {}


def _worker(alphas: list[float]) -> list[tuple[float, float]]:
    d_pt, d_ifl, k, engine = _SHARED["d_pt"], _SHARED["d_ifl"], _SHARED["k"], _SHARED["engine"]
    buf = np.empty_like(d_pt)
    return [evaluate_alpha(d_pt, d_ifl, a, k, buf, engine)[:2] for a in alphas]


def scan_alphas(d_pt, d_ifl, alphas, k: int, *, n_jobs: int | None = None, progress: bool = True,
                engine: str = "auto"):
    """`E_PT`, `E_IFL` (float64 arrays) on the pre-sample for every alpha. With `n_jobs > 1`,
    alphas are spread over forked worker processes that share the two matrices."""
    alphas = [float(a) for a in alphas]
    n_jobs = resolve_jobs(n_jobs, len(alphas))
    engine = resolve_engine(engine, d_pt.shape[0])
    if engine == "numba" and n_jobs > 1:
        warm_up(d_pt.dtype)  # the forked workers inherit the compiled kernels
    results: list[tuple[float, float] | None] = [None] * len(alphas)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(alphas), desc="alpha scan", unit="alpha", leave=False)
    # small chunks keep both workers busy to the end; results go back in grid order
    chunks = [list(range(s, min(s + 4, len(alphas)))) for s in range(0, len(alphas), 4)]
    if n_jobs > 1:
        _SHARED.update(d_pt=d_pt, d_ifl=d_ifl, k=k, engine=engine)
        try:
            done = in_workers(_worker, n_jobs, [[alphas[i] for i in c] for c in chunks],
                               on_result=lambda values: bar.update(len(values)) if bar is not None else None)
            for c, values in zip(chunks, done):
                for i, r in zip(c, values):
                    results[i] = r
        finally:
            _SHARED.clear()
    else:
        buf = np.empty_like(d_pt)
        for c in chunks:
            for i in c:
                results[i] = evaluate_alpha(d_pt, d_ifl, alphas[i], k, buf, engine)[:2]
            if bar is not None:
                bar.update(len(c))
    if bar is not None:
        bar.close()
    e_pt = np.array([r[0] for r in results], dtype=np.float64)
    e_ifl = np.array([r[1] for r in results], dtype=np.float64)
    return e_pt, e_ifl
