"""MINT coreset selection: `select_coreset` (pure: arrays in, a frozen result out) and
`run_selection` (the library function behind `mint select`, which reads features from a folder
and writes every output).

Stages of `select_coreset` for method "mint" with automatic alpha (shared/DESIGN.md section 3):
1. pre-sample `n_pre` rows, compute the PT and IFL distances among them once;
2. choose alpha on the pre-sample (grid scan + plateau, or golden-section search);
3. on all N rows, build `D_a` block by block (one N x N matrix), `S = max(D_a) - D_a` in place,
   lazy greedy for the largest ratio; smaller ratios are prefixes of its order;
4. weights per ratio, and `E_PT`, `E_IFL` of every subset on all N rows.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from mint.selection import alpha as alpha_mod
from mint.selection.distances import (
    DEFAULT_BLOCK,
    Combination,
    alpha_combination,
    coef_combination,
    combined_distances,
    cross_distances,
    pairwise_distances,
)
from mint.errors import MintError
from mint.selection.facility import lazy_greedy, prefix_weights, similarity_from_distance

__all__ = ["Subset", "SelectionResult", "select_coreset", "estimate_memory"]

logger = logging.getLogger(__name__)

METHODS = ("mint", "craig", "random", "pt", "ifl")
ALPHA_METHODS = ("plateau", "plateau_scaled", "golden")
KINDS = ("sft", "pt", "ifl")
# The baselines as fixed coefficients (c_sft, c_pt, c_ifl) on the same facility-location engine.
BASELINE_COEF = {"craig": (1.0, 0.0, 0.0), "pt": (0.0, 1.0, 0.0), "ifl": (0.0, 0.0, 1.0)}


@dataclass(frozen=True)
class Subset:
    """One coreset: `indices` (int64, greedy order) into the N rows and their `weights`
    (float64, summing to N)."""

    indices: np.ndarray
    weights: np.ndarray
    ratio: float = 0.0
    e_pt: float | None = None  # sum_i min_{j in T} d_PT(i, j) over all N rows
    e_ifl: float | None = None


@dataclass(frozen=True)
class SelectionResult:
    method: str
    alpha: float | None
    alpha_method: str | None
    coef: tuple[float, float, float] | None
    order: np.ndarray  # int64 greedy order for the largest ratio
    gains: np.ndarray  # float64 gain of each step (NaN for random)
    subsets: dict  # ratio -> Subset
    curve: alpha_mod.AlphaCurve | None
    n: int
    seed: int
    settings: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- validation


def _check_features(features: Mapping[str, np.ndarray], needed: Sequence[str], method: str) -> int:
    if not isinstance(features, Mapping):
        raise MintError("features must be a dict like {'sft': F_sft, 'pt': F_pt, 'ifl': F_ifl} of (N, D) arrays")
    unknown = [k for k in features if k not in KINDS]
    if unknown:
        raise MintError(f"unknown feature kind(s) {unknown}; expected keys among {list(KINDS)}")
    missing = [k for k in needed if k not in features or features[k] is None]
    if missing:
        raise MintError(
            f"method {method!r} needs feature kind(s) {missing} but only {sorted(k for k in features if features[k] is not None)} "
            "were given; compute them with `mint grads`, or choose a method that uses the kinds you have"
        )
    sizes = {}
    for kind, X in features.items():
        if X is None:
            continue
        shape = np.shape(X)
        if len(shape) != 2:
            raise MintError(f"features[{kind!r}] must be a 2-D (N, D) array, got shape {shape}")
        sizes[kind] = shape[0]
    if not sizes:
        raise MintError("no feature arrays given")
    if len(set(sizes.values())) > 1:
        raise MintError(f"feature arrays have different numbers of rows {sizes}; they must describe the same N examples")
    n = next(iter(sizes.values()))
    if n < 2:
        raise MintError(f"need at least 2 examples to select from, got N={n}")
    for kind, X in features.items():
        if X is None or (kind not in needed and kind not in ("pt", "ifl")):
            continue  # an unused kind (SFT for MINT) is never read, so it is not checked either
        bad = _nonfinite_rows(X)
        if len(bad):
            shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise MintError(
                f"features[{kind!r}] has {len(bad)} row(s) with NaN or inf values (rows {shown}); "
                "recompute those examples' gradients (a diverged warm-up is the usual cause) or drop them"
            )
    return n


def _nonfinite_rows(X, chunk: int = 4096) -> np.ndarray:
    bad = []
    for s in range(0, X.shape[0], chunk):
        ok = np.isfinite(np.asarray(X[s : s + chunk])).all(axis=1)
        bad.extend((np.flatnonzero(~ok) + s).tolist())
    return np.array(bad, dtype=np.int64)


def _check_ratios(ratios) -> list[float]:
    if ratios is None or np.ndim(ratios) == 0:
        ratios = [ratios]
    out = []
    for r in ratios:
        try:
            r = float(r)
        except (TypeError, ValueError) as e:
            raise MintError(f"ratio {r!r} is not a number; give fractions of the dataset such as 0.05 0.1") from e
        if not (math.isfinite(r) and 0 < r <= 1):
            raise MintError(f"ratio {r} is outside (0, 1]; give fractions of the dataset such as 0.05 0.1 0.15")
        out.append(r)
    if not out:
        raise MintError("no ratios given; give at least one, e.g. ratios=[0.05]")
    return sorted(set(out))


def _check_settings(method, alpha, alpha_method, coef, preheat_ratio, dtype):
    if method not in METHODS:
        raise MintError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if alpha_method not in ALPHA_METHODS:
        raise MintError(f"unknown alpha_method {alpha_method!r}; choose one of {', '.join(ALPHA_METHODS)}")
    if method != "mint" and (alpha is not None or coef is not None):
        raise MintError(f"alpha and coef apply only to method 'mint', not {method!r}; drop them or use method='mint'")
    if alpha is not None and coef is not None:
        raise MintError("give either alpha or coef, not both")
    if alpha is not None:
        try:
            a = float(alpha)
        except (TypeError, ValueError) as e:
            raise MintError(f"alpha {alpha!r} is not a number") from e
        if not (math.isfinite(a) and 0 < a < 1):
            raise MintError(
                f"alpha must lie strictly between 0 and 1, got {alpha}; leave it unset for the automatic search"
            )
    if coef is not None:
        try:
            c = tuple(float(x) for x in coef)
        except (TypeError, ValueError) as e:
            raise MintError(f"coef {coef!r} must be three numbers (c_sft, c_pt, c_ifl)") from e
        if len(c) != 3:
            raise MintError(f"coef must be three numbers (c_sft, c_pt, c_ifl), got {len(c)}")
        if any(not math.isfinite(x) or x < 0 for x in c):
            raise MintError(f"coefficients must be finite and >= 0, got {c}")
        if not any(c):
            raise MintError("coefficients are all 0; at least one of c_sft, c_pt, c_ifl must be positive")
    try:
        preheat_ok = 0 < float(preheat_ratio) <= 1
    except (TypeError, ValueError):
        preheat_ok = False
    if not preheat_ok:
        raise MintError(f"preheat_ratio must be in (0, 1], got {preheat_ratio!r}")
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise MintError(f"dtype must be float32 or float64, got {dtype!r}")


# ----------------------------------------------------------------------------- memory


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_memory(n: int, d: int, *, n_pre: int, n_kinds: int, auto: bool, n_jobs: int, itemsize: int,
                    feature_itemsize: int = 4, block: int = DEFAULT_BLOCK) -> dict:
    """Peak bytes of each stage, beyond the caller's own feature arrays."""
    cast = 0 if itemsize == feature_itemsize else n * d * itemsize * n_kinds  # features cast to dtype
    blocks = (n_kinds + 3) * min(block, n) ** 2 * 8
    pre = 0
    if auto:
        pre = (2 + n_jobs) * n_pre * n_pre * itemsize + 2 * n_pre * d * itemsize + blocks
    full = n * n * itemsize + cast + blocks + 64 * n * 8
    # the faster variant for MINT: d_PT and d_IFL kept whole (the floor is computed once, the
    # combined matrix and every error are read from them), three N x N matrices
    cached = 3 * n * n * itemsize + cast + blocks + 64 * n * 8
    return {"pre_sample": pre, "full": full, "peak": max(pre, full), "cached_full": cached}


def _check_memory(est: dict, limit_bytes: int | None, dtype, auto: bool, n: int) -> None:
    gib = 1 << 30
    logger.info(
        "memory estimate: pre-sample stage %.2f GiB, full stage %.2f GiB (one %d x %d %s matrix), peak %.2f GiB",
        est["pre_sample"] / gib, est["full"] / gib, n, n, np.dtype(dtype).name, est["peak"] / gib,
    )
    if limit_bytes is None:
        return
    if est["peak"] <= limit_bytes:
        return
    hints = []
    if np.dtype(dtype) == np.float64:
        hints.append("use dtype float32 (`--dtype float32`), which halves every matrix")
    if auto and est["pre_sample"] >= est["full"]:
        hints.append("lower `--preheat_ratio` or use `--n_jobs 1`")
    hints.append("run on a machine with more memory, or raise the limit with `--max_memory_gb` if you know better")
    raise MintError(
        f"selection needs about {est['peak'] / gib:.1f} GiB but only {limit_bytes / gib:.1f} GiB is available; "
        + "; ".join(hints)
    )


# ----------------------------------------------------------------------------- the core


def _errors_along(features, order: np.ndarray, ks: list[int], dtype, block: int) -> dict[str, dict[int, float]]:
    """`E_K(order[:k]) = sum_i min_{j in order[:k]} d_K(i, j)` on all rows, for K in PT/IFL
    and every k, in one pass over column blocks of the order."""
    out: dict[str, dict[int, float]] = {}
    bounds = sorted(set(range(0, max(ks), block)) | set(ks) | {0})
    for kind in ("pt", "ifl"):
        if kind not in features or features[kind] is None:
            continue
        X = features[kind]
        n = X.shape[0]
        best = np.full(n, np.inf, dtype=dtype)
        out[kind] = {}
        for s, e in zip(bounds[:-1], bounds[1:]):
            cols = order[s:e]
            d = cross_distances(X, np.asarray(X[cols]), dtype=dtype, block=block)
            d[cols, np.arange(len(cols))] = 0  # self-distance exactly 0, as in the N x N matrices
            np.minimum(best, d.min(axis=1), out=best)
            if e in ks:
                out[kind][e] = float(best.sum(dtype=np.float64))
    return out


def _prefix_min_sums(d: np.ndarray, order: np.ndarray, ks: list[int]) -> dict[int, float]:
    """`sum_i min_{j in order[:k]} d(i, j)` for every k, from a whole symmetric matrix."""
    best = np.full(d.shape[0], np.inf, dtype=d.dtype)
    out = {}
    for pos in range(max(ks)):
        np.minimum(best, d[order[pos]], out=best)
        if pos + 1 in ks:
            out[pos + 1] = float(best.sum(dtype=np.float64))
    return out


def _choose_alpha(features, n, r_max, *, alpha_method, preheat_ratio, seed, dtype, n_jobs, plateau_min_alpha,
                  golden_tol, golden_max_iter, block, progress):
    n_pre = max(2, int(round(preheat_ratio * n)))
    n_pre = min(n_pre, n)
    k_pre = max(1, int(round(r_max * n_pre)))
    pre = np.random.default_rng(seed).choice(n, n_pre, replace=False)
    d_pt = pairwise_distances(np.asarray(features["pt"][pre]), dtype=dtype, block=block)
    d_ifl = pairwise_distances(np.asarray(features["ifl"][pre]), dtype=dtype, block=block)
    if alpha_method == "golden":
        evaluated = {}
        buf = np.empty_like(d_pt)

        def total_error(a: float) -> float:
            e_pt, e_ifl, _ = alpha_mod.evaluate_alpha(d_pt, d_ifl, a, k_pre, buf)
            evaluated[a] = (e_pt, e_ifl)
            return e_pt + e_ifl

        chosen, _ = alpha_mod.golden_search(total_error, tol=golden_tol, max_iter=golden_max_iter)
        alphas = np.array(sorted(evaluated))
        curve = alpha_mod.AlphaCurve(
            alpha=alphas, e_pt=np.array([evaluated[a][0] for a in alphas]), e_ifl=np.array([evaluated[a][1] for a in alphas]),
            method="golden", chosen=float(chosen), reason="minimum of E_PT + E_IFL found by golden-section search",
            n_pre=n_pre, k_pre=k_pre,
        )
        return float(chosen), curve
    alphas = alpha_mod.alpha_grid()
    e_pt, e_ifl = alpha_mod.scan_alphas(d_pt, d_ifl, alphas, k_pre, n_jobs=n_jobs, progress=progress)
    plateau = alpha_mod.detect_plateau(alphas, e_ifl, scaled=alpha_method == "plateau_scaled", min_alpha=plateau_min_alpha)
    chosen = float(alphas[plateau.index])
    curve = alpha_mod.AlphaCurve(
        alpha=alphas, e_pt=e_pt, e_ifl=e_ifl, method=alpha_method, chosen=chosen, sigma=plateau.sigma,
        diffs=plateau.diffs, plateau_starts=plateau.starts, reason=plateau.reason, n_pre=n_pre, k_pre=k_pre,
    )
    return chosen, curve


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def select_coreset(
    features: Mapping[str, np.ndarray],
    ratios: Sequence[float] = (0.05, 0.1, 0.15),
    method: str = "mint",
    alpha: float | None = None,
    alpha_method: str = "plateau",
    coef: Sequence[float] | None = None,
    preheat_ratio: float = 0.3,
    seed: int = 0,
    *,
    dtype: str = "float32",
    n_jobs: int | None = None,
    plateau_min_alpha: float = alpha_mod.PLATEAU_MIN_ALPHA,
    golden_tol: float = 1e-3,
    golden_max_iter: int = 40,
    compute_errors: bool = True,
    max_memory_gb: float | None = None,
    cache_distances: bool | None = None,
    block: int = DEFAULT_BLOCK,
    progress: bool = True,
) -> SelectionResult:
    """Select weighted coresets for every ratio (see the module docstring and issue 2).

    features: {"sft", "pt", "ifl"} -> (N, D) arrays with L2-normalised rows ("sft" may be absent
      when unused). method: "mint" | "craig" (SFT only) | "random" | "pt" | "ifl".
    alpha: manual alpha in (0, 1); None with coef None = automatic (`alpha_method`).
    coef: (c_sft, c_pt, c_ifl) >= 0, not all 0, instead of alpha.
    dtype: distance precision; float32 is fast, float64 matches a plain float64 implementation.
    n_jobs: worker processes for the alpha scan (None: every available core).
    max_memory_gb: refuse when the estimate exceeds it (None: the memory available now).
    cache_distances: for MINT, keep the whole d_PT and d_IFL (three N x N matrices) instead of
      forming the combined matrix block by block (one N x N matrix); None: when that fits in
      half the memory limit. The selection is the same either way; only its speed changes.
    """
    _check_settings(method, alpha, alpha_method, coef, preheat_ratio, dtype)
    dtype = np.dtype(dtype)
    auto = method == "mint" and alpha is None and coef is None
    if method == "mint":
        if coef is not None:
            coef = tuple(float(x) for x in coef)
            needed = [k for k, c in zip(KINDS, coef) if c]
        else:
            needed = ["pt", "ifl"]
    elif method == "random":
        needed = []
    else:
        coef = BASELINE_COEF[method]
        needed = [k for k, c in zip(KINDS, coef) if c]
    n = _check_features(features, needed, method)
    ratio_list = _check_ratios(ratios)
    ks = {r: max(1, int(round(r * n))) for r in ratio_list}
    k_max = min(max(ks.values()), n)
    for r, k in ks.items():
        if k >= n:
            warnings.warn(f"ratio {r} selects all {n} examples; each gets weight 1", stacklevel=2)
            logger.warning("ratio %s selects all %d examples; each gets weight 1", r, n)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    used = [k for k in KINDS if k in features and features[k] is not None]
    d = np.shape(features[used[0]])[1]
    n_jobs_eff = alpha_mod._resolve_jobs(n_jobs, 174)
    n_pre = min(n, max(2, int(round(preheat_ratio * n))))
    est, limit = None, None
    if method != "random":
        est = estimate_memory(n, d, n_pre=n_pre, n_kinds=max(1, len(needed)), auto=auto, n_jobs=n_jobs_eff,
                              itemsize=dtype.itemsize, block=block)
        limit = int(max_memory_gb * (1 << 30)) if max_memory_gb is not None else _available_bytes()
        _check_memory(est, limit, dtype, auto, n)

    curve = None
    chosen_alpha = float(alpha) if alpha is not None else None
    if auto:
        chosen_alpha, curve = _choose_alpha(
            features, n, max(ratio_list), alpha_method=alpha_method, preheat_ratio=preheat_ratio, seed=seed,
            dtype=dtype, n_jobs=n_jobs, plateau_min_alpha=plateau_min_alpha, golden_tol=golden_tol,
            golden_max_iter=golden_max_iter, block=block, progress=progress,
        )
        timings["alpha_search_s"] = time.perf_counter() - t0
        logger.info("chosen alpha %.6f (%s: %s)", chosen_alpha, alpha_method, curve.reason)

    t1 = time.perf_counter()
    if method == "random":
        order = np.random.default_rng(seed).permutation(n)[:k_max].astype(np.int64)
        gains = np.full(k_max, np.nan)
        weights = {k: np.full(min(k, n), n / min(k, n)) for k in ks.values()}
    else:
        cached = None
        if chosen_alpha is not None and cache_distances is not False:
            fits = limit is None or max(est["pre_sample"], est["cached_full"]) <= 0.5 * limit
            cached = {} if (cache_distances or fits) else None
        if cached is not None:
            # Same values as the block-by-block path (same blocks, same formula), so the selection
            # does not depend on this choice; it only saves the second distance pass.
            for kind in ("pt", "ifl"):
                cached[kind] = pairwise_distances(features[kind], dtype=dtype, block=block)
            S = np.empty_like(cached["pt"])
            alpha_mod._alpha_similarity(cached["pt"], cached["ifl"], chosen_alpha, S)
        else:
            combo: Combination = alpha_combination(chosen_alpha) if chosen_alpha is not None else coef_combination(coef)
            S = combined_distances(features, combo, dtype=dtype, block=block, progress=progress)
            similarity_from_distance(S, out=S)  # in place: the one N x N matrix
        timings["distances_s"] = time.perf_counter() - t1
        strategy = "cached" if cached is not None else "blockwise"
        logger.info("distances on all %d rows (%s): %.1f s", n, strategy, timings["distances_s"])
        t2 = time.perf_counter()
        order, gains = lazy_greedy(S, k_max, symmetric=True, nonnegative=True)
        weights = prefix_weights(S, order, [min(k, n) for k in ks.values()], symmetric=True)
        timings["greedy_s"] = time.perf_counter() - t2
        logger.info("greedy for k = %d: %.1f s", k_max, timings["greedy_s"])
        del S
    errors = {}
    if method == "random":
        cached, strategy = None, "none"
    if compute_errors:
        t3 = time.perf_counter()
        wanted = sorted({min(k, n) for k in ks.values()})
        if method != "random" and cached is not None:
            errors = {kind: _prefix_min_sums(d, order, wanted) for kind, d in cached.items()}
        else:
            errors = _errors_along(features, order, wanted, dtype, block)
        timings["errors_s"] = time.perf_counter() - t3
    subsets = {}
    for r, k in ks.items():
        k = min(k, n)
        w = np.ones(n) if k >= n else weights[k]
        subsets[r] = Subset(
            indices=_readonly(order[:k].copy()), weights=_readonly(np.asarray(w, dtype=np.float64)), ratio=r,
            e_pt=errors.get("pt", {}).get(k), e_ifl=errors.get("ifl", {}).get(k),
        )
    timings["total_s"] = time.perf_counter() - t0
    settings = {
        "method": method, "alpha": chosen_alpha, "alpha_method": alpha_method if auto else None,
        "coef": list(coef) if coef is not None else None, "ratios": ratio_list, "preheat_ratio": preheat_ratio,
        "seed": seed, "dtype": dtype.name, "plateau_min_alpha": plateau_min_alpha, "golden_tol": golden_tol,
        "golden_max_iter": golden_max_iter, "distance_strategy": strategy,
    }
    return SelectionResult(
        method=method, alpha=chosen_alpha, alpha_method=alpha_method if auto else None,
        coef=tuple(coef) if coef is not None and method == "mint" else None,
        order=_readonly(order), gains=_readonly(np.asarray(gains, dtype=np.float64)), subsets=subsets, curve=curve,
        n=n, seed=seed, settings=settings, timings=timings,
    )
