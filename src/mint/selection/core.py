"""`select_coreset`: MINT coreset selection, pure (arrays in, a frozen result out).

It runs these stages, each a function below (docs/design.md section 3):
1. `_plan`: check the features, ratios and settings; the subset size k of every ratio;
2. `_check_memory`: estimate the peak memory and refuse early when it exceeds the caller's limit;
3. `_choose_alpha` (method "mint" with automatic alpha): pre-sample `n_pre` rows, compute the PT
   and IFL distances among them once, and choose alpha there (grid scan + plateau, or
   golden-section search);
4. `_similarity`: on all N rows, `D_a` (block by block from the features, one N x N matrix, or
   from the whole cached d_PT and d_IFL) and `S = max(D_a) - D_a` in place;
5. `_greedy_and_weights`: lazy greedy for the largest ratio (smaller ratios are prefixes of its
   order) and the weights of every prefix;
6. `_errors`: `E_PT`, `E_IFL` of every subset on all N rows;
7. `_result`: the frozen `SelectionResult`.

Reading files, the memory available on the machine and writing outputs belong to the caller
(`mint.pipeline.select_step.run_selection`, behind `mint select`). Stage times are logged
(logger `mint.selection.core`, with `stage` and `seconds` on each record), never returned.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Mapping, Sequence

import numpy as np

from mint.choices import FEATURE_KINDS as KINDS
from mint.choices import SELECTION_PARTITIONS
from mint.errors import MintError
from mint.selection import alpha as alpha_mod
from mint.selection.distances import (
    DEFAULT_BLOCK,
    DistanceColumns,
    alpha_combination,
    coef_combination,
    combined_distances,
    pairwise_distances,
    prefix_min_sums,
)
from mint.selection.engine import check_engine
from mint.selection.facility import GAIN_SUM, lazy_greedy, prefix_weights, similarity_from_distance
from mint.selection.memory import check_limit, check_memory, choose_strategy, estimate_memory, estimate_strategies
from mint.selection.partition import DEFAULT_PARTITION_SIZE, select_partitioned
from mint.selection.validation import check_count, check_features, check_ratios, check_settings, check_strategy

__all__ = ["Subset", "SelectionResult", "select_coreset", "estimate_memory"]

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class _Plan:
    """The checked settings of one call."""

    method: str
    auto: bool  # method "mint" with automatic alpha
    coef: tuple[float, ...] | None  # the explicit or baseline coefficients
    needed: list[str]  # feature kinds the method reads
    n: int
    ratios: list[float]  # sorted, distinct
    ks: dict[float, int]  # ratio -> subset size
    dtype: np.dtype
    # echoed in `SelectionResult.settings`; the alpha search reads them too
    alpha_method: str
    preheat_ratio: float
    preheat_max: int
    seed: int
    plateau_min_alpha: float
    golden_tol: float
    golden_max_iter: int
    engine: str = "auto"  # compiled or numpy kernels (`mint.selection.engine`); the same bytes either way

    @property
    def n_pre(self) -> int:
        """Rows of the alpha search's pre-sample: `round(preheat_ratio * N)`, at least 2, at most
        `preheat_max` (and N)."""
        return min(max(2, int(round(self.preheat_ratio * self.n))), self.preheat_max, self.n)

    @property
    def k_max(self) -> int:
        return min(max(self.ks.values()), self.n)

    @property
    def sizes(self) -> list[int]:
        return sorted({min(k, self.n) for k in self.ks.values()})


def _log_stage(stage: str, t0: float, message: str = "", *args) -> None:
    seconds = time.perf_counter() - t0
    logger.info(stage + message + ": %.1f s", *args, seconds, extra={"stage": stage, "seconds": seconds})


# ----------------------------------------------------------------------------- 1. settings


def _plan(features, ratios, *, method, alpha, alpha_method, coef, preheat_ratio, preheat_max, seed, dtype,
          plateau_min_alpha, golden_tol, golden_max_iter, engine) -> _Plan:
    check_settings(method, alpha, alpha_method, coef, preheat_ratio, dtype)
    check_count(preheat_max, "preheat_max", 2, "the alpha search needs a pre-sample of at least 2 rows")
    check_engine(engine)
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
    n = check_features(features, needed, method)
    ratio_list = check_ratios(ratios)
    ks = {r: max(1, int(round(r * n))) for r in ratio_list}
    for r, k in ks.items():
        if k >= n:
            # stacklevel 3: the warning points at the caller of select_coreset
            warnings.warn(f"ratio {r} selects all {n} examples; each gets weight 1", stacklevel=3)
            logger.warning("ratio %s selects all %d examples; each gets weight 1", r, n)
    return _Plan(method, auto, coef, needed, n, ratio_list, ks, np.dtype(dtype), alpha_method, preheat_ratio,
                 int(preheat_max), seed, plateau_min_alpha, golden_tol, golden_max_iter, engine)


# ----------------------------------------------------------------------------- 2. memory


def _estimates(plan: _Plan, features, *, n_jobs, block, partition_size: int) -> dict[str, dict]:
    used = [k for k in KINDS if k in features and features[k] is not None]
    return estimate_strategies(plan.n, np.shape(features[used[0]])[1], n_pre=plan.n_pre,
                               n_kinds=max(1, len(plan.needed)), auto=plan.auto, n_jobs=n_jobs,
                               itemsize=plan.dtype.itemsize, block=block, partition_size=partition_size)


# ----------------------------------------------------------------------------- 3. alpha


def _choose_alpha(features, plan: _Plan, *, n_jobs, block, progress) -> tuple[float, alpha_mod.AlphaCurve]:
    """Alpha from a random pre-sample of `n_pre` rows (subset size for the largest ratio)."""
    n, dtype = plan.n, plan.dtype
    n_pre = plan.n_pre
    k_pre = max(1, int(round(max(plan.ratios) * n_pre)))
    pre = np.random.default_rng(plan.seed).choice(n, n_pre, replace=False)
    d_pt = pairwise_distances(np.asarray(features["pt"][pre]), dtype=dtype, block=block)
    d_ifl = pairwise_distances(np.asarray(features["ifl"][pre]), dtype=dtype, block=block)
    if plan.alpha_method == "golden":
        evaluated = {}
        buf = np.empty_like(d_pt)

        def total_error(a: float) -> float:
            e_pt, e_ifl, _ = alpha_mod.evaluate_alpha(d_pt, d_ifl, a, k_pre, buf, plan.engine)
            evaluated[a] = (e_pt, e_ifl)
            return e_pt + e_ifl

        chosen, _ = alpha_mod.golden_search(total_error, tol=plan.golden_tol, max_iter=plan.golden_max_iter)
        alphas = np.array(sorted(evaluated))
        curve = alpha_mod.AlphaCurve(
            alpha=alphas, e_pt=np.array([evaluated[a][0] for a in alphas]), e_ifl=np.array([evaluated[a][1] for a in alphas]),
            method="golden", chosen=float(chosen), reason="minimum of E_PT + E_IFL found by golden-section search",
            n_pre=n_pre, k_pre=k_pre,
        )
        return float(chosen), curve
    alphas = alpha_mod.alpha_grid()
    e_pt, e_ifl = alpha_mod.scan_alphas(d_pt, d_ifl, alphas, k_pre, n_jobs=n_jobs, progress=progress,
                                        engine=plan.engine)
    plateau = alpha_mod.detect_plateau(alphas, e_ifl, scaled=plan.alpha_method == "plateau_scaled",
                                       min_alpha=plan.plateau_min_alpha)
    chosen = float(alphas[plateau.index])
    curve = alpha_mod.AlphaCurve(
        alpha=alphas, e_pt=e_pt, e_ifl=e_ifl, method=plan.alpha_method, chosen=chosen, sigma=plateau.sigma,
        diffs=plateau.diffs, plateau_starts=plateau.starts, reason=plateau.reason, n_pre=n_pre, k_pre=k_pre,
    )
    return chosen, curve


# ----------------------------------------------------------------------------- 4. similarity


def _use_cache(alpha: float | None, cache_distances: bool | None, est: dict, limit_bytes: int | None) -> bool:
    """Keep the whole d_PT and d_IFL (MINT with an alpha only): when asked, or when asked for
    neither and it fits in half the limit. Without a limit nothing says three N x N matrices fit
    (32 GB at N = 52,000), so the lean path (one N x N matrix) is taken."""
    if alpha is None or cache_distances is False:
        return False
    fits = limit_bytes is not None and max(est["pre_sample"], est["cached_full"]) <= 0.5 * limit_bytes
    return bool(cache_distances or fits)


def _similarity(features, plan: _Plan, alpha, *, cached: dict | None, block, progress) -> np.ndarray:
    """`S = max(D) - D` on all N rows, the one N x N matrix of the greedy. With `cached`, its
    d_PT and d_IFL are computed here and kept for the errors: the same values as the
    block-by-block path (same blocks, same formula), so the selection does not depend on it."""
    if cached is not None:
        for kind in ("pt", "ifl"):
            cached[kind] = pairwise_distances(features[kind], dtype=plan.dtype, block=block)
        S = np.empty_like(cached["pt"])
        return alpha_mod.alpha_similarity(cached["pt"], cached["ifl"], alpha, S, engine=plan.engine)
    combo = alpha_combination(alpha) if alpha is not None else coef_combination(plan.coef)
    S = combined_distances(features, combo, dtype=plan.dtype, block=block, progress=progress)
    return similarity_from_distance(S, out=S)  # in place: the one N x N matrix


# ----------------------------------------------------------------------------- 5. greedy and weights


def _random_selection(plan: _Plan):
    n, k_max = plan.n, plan.k_max
    order = np.random.default_rng(plan.seed).permutation(n)[:k_max].astype(np.int64)
    gains = np.full(k_max, np.nan)
    weights = {k: np.full(min(k, n), n / min(k, n)) for k in plan.ks.values()}
    return order, gains, weights


def _greedy_and_weights(S: np.ndarray, plan: _Plan):
    t0 = time.perf_counter()
    order, gains = lazy_greedy(S, plan.k_max, symmetric=True, nonnegative=True, engine=plan.engine)
    weights = prefix_weights(S, order, plan.sizes, symmetric=True, engine=plan.engine)
    _log_stage("greedy", t0, " for k = %d", plan.k_max)
    return order, gains, weights


def _exact(features, plan: _Plan, alpha, *, cache: bool, block: int, progress: bool, compute_errors: bool):
    """Similarity, greedy, weights and errors on the rows of `features`: the exact engine, run on
    all N rows or on one part (`mint.selection.partition`)."""
    t1 = time.perf_counter()
    cached = {} if cache else None
    S = _similarity(features, plan, alpha, cached=cached, block=block, progress=progress)
    _log_stage("distances", t1, " on %d rows (%s)", plan.n, "cached" if cache else "blockwise")
    order, gains, weights = _greedy_and_weights(S, plan)
    del S
    errors = {}
    if compute_errors:
        t1 = time.perf_counter()
        errors = _errors(features, plan, order, cached, block)
        _log_stage("errors", t1)
    return order, gains, weights, errors


# ----------------------------------------------------------------------------- 6. errors


def _errors(features, plan: _Plan, order: np.ndarray, cached: dict | None, block: int) -> dict[str, dict[int, float]]:
    """`E_K(order[:k])` on all N rows for K in PT/IFL (those given) and every subset size k:
    read from the cached matrices when there are any, else computed from the features."""
    if cached is not None:
        sources = {kind: DistanceColumns.from_matrix(d) for kind, d in cached.items()}
    else:
        sources = {kind: DistanceColumns.from_features(features[kind], dtype=plan.dtype, block=block)
                   for kind in ("pt", "ifl") if kind in features and features[kind] is not None}
    return {kind: prefix_min_sums(source, order, plan.sizes) for kind, source in sources.items()}


# ----------------------------------------------------------------------------- 7. result


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _result(plan: _Plan, *, order, gains, weights, errors, alpha, curve, strategy) -> SelectionResult:
    n = plan.n
    subsets = {}
    for r, k in plan.ks.items():
        k = min(k, n)
        w = np.ones(n) if k >= n else weights[k]
        subsets[r] = Subset(
            indices=_readonly(order[:k].copy()), weights=_readonly(np.asarray(w, dtype=np.float64)), ratio=r,
            e_pt=errors.get("pt", {}).get(k), e_ifl=errors.get("ifl", {}).get(k),
        )
    alpha_method = plan.alpha_method if plan.auto else None
    settings = {
        "method": plan.method, "alpha": alpha, "alpha_method": alpha_method,
        "coef": list(plan.coef) if plan.coef is not None else None, "ratios": plan.ratios,
        "preheat_ratio": plan.preheat_ratio, "preheat_max": plan.preheat_max, "seed": plan.seed,
        "dtype": plan.dtype.name,
        "plateau_min_alpha": plan.plateau_min_alpha, "golden_tol": plan.golden_tol,
        "golden_max_iter": plan.golden_max_iter, "distance_strategy": strategy, "gain_sum": GAIN_SUM,
    }
    return SelectionResult(
        method=plan.method, alpha=alpha, alpha_method=alpha_method,
        coef=tuple(plan.coef) if plan.coef is not None and plan.method == "mint" else None,
        order=_readonly(order), gains=_readonly(np.asarray(gains, dtype=np.float64)), subsets=subsets, curve=curve,
        n=n, seed=plan.seed, settings=settings,
    )


# ----------------------------------------------------------------------------- the stages in order


# Over 60 lines only for its keyword list and their docstring; the body is the stages above in order.
def select_coreset(
    features: Mapping[str, np.ndarray],
    *,
    ratios: Sequence[float] = (0.05,),  # the config default `selection.ratios`
    method: str = "mint",
    alpha: float | None = None,
    alpha_method: str = "plateau",
    coef: Sequence[float] | None = None,
    preheat_ratio: float = 0.3,  # the reference's pre-sample: 30% of N
    seed: int = 0,
    dtype: str = "float32",
    n_jobs: int | None = None,
    plateau_min_alpha: float = alpha_mod.PLATEAU_MIN_ALPHA,
    golden_tol: float = 1e-3,
    golden_max_iter: int = 40,
    compute_errors: bool = True,
    memory_limit_bytes: int | None = None,
    cache_distances: bool | None = None,
    strategy: str = "auto",
    partition_size: int = DEFAULT_PARTITION_SIZE,
    partition: str = "random",
    second_round: bool = False,
    preheat_max: int = 10_000,  # the pre-sample's cap: alpha from at most 10,000 rows at any N
    part_cache=None,
    engine: str = "auto",
    block: int = DEFAULT_BLOCK,
    progress: bool = True,
) -> SelectionResult:
    """Select weighted coresets for every ratio (the module docstring; docs/design.md section 3).

    features: {"sft", "pt", "ifl"} -> (N, D) arrays with L2-normalised rows ("sft" may be absent
      when unused). method: "mint" | "craig" (SFT only) | "random" | "pt" | "ifl".
    alpha: manual alpha in (0, 1); None with coef None = automatic (`alpha_method`).
    coef: (c_sft, c_pt, c_ifl) >= 0, not all 0, instead of alpha.
    dtype: distance precision; float32 is fast, float64 matches a plain float64 implementation.
    n_jobs: worker processes for the alpha scan (None: every available core).
    memory_limit_bytes: refuse when the memory estimate exceeds it (None: no check). The caller
      decides the limit (`mint select` passes `--max_memory_gb` or the memory available now).
    cache_distances: for MINT, keep the whole d_PT and d_IFL (three N x N matrices) instead of
      forming the combined matrix block by block (one N x N matrix); None: when that fits in
      half the memory limit (never, without a limit). The selection is the same either way;
      only its speed changes.
    strategy: exact (one N x N matrix) | partitioned (parts of at most `partition_size` rows,
      `mint.selection.partition`) | auto (exact while its memory estimate fits the limit; without
      a limit, while N <= partition_size).
    partition: random (seeded) | kmeans parts (k-means on the features of the combined distance,
      clusters cut to at most `partition_size` rows; `mint.selection.partition.kmeans_parts`).
    second_round: for a partitioned selection, a second greedy round (GreeDi) over the union of
      the parts' picks against all N rows, with global weights and errors
      (`mint.selection.partition`); refused when its N x |U| matrix exceeds the memory limit.
    preheat_max: the automatic alpha's pre-sample has min(round(preheat_ratio * N), preheat_max) rows.
    part_cache: for a partitioned selection, an object with `get(part, fingerprint)` and
      `put(part, fingerprint, result)` that keeps finished parts (the caller's storage; see
      `mint.pipeline.select_step`), so an interrupted run resumes at the part where it stopped.
    engine: auto | numba | numpy: the greedy, weights and alpha scan as compiled kernels or in
      numpy (`mint.selection.engine`; auto: compiled when numba is installed and the matrix has at
      least 1,000 rows). The same selection bit for bit; only its speed changes.
    """
    t0 = time.perf_counter()
    plan = _plan(features, ratios, method=method, alpha=alpha, alpha_method=alpha_method, coef=coef,
                 preheat_ratio=preheat_ratio, preheat_max=preheat_max, seed=seed, dtype=dtype,
                 plateau_min_alpha=plateau_min_alpha, golden_tol=golden_tol, golden_max_iter=golden_max_iter,
                 engine=engine)
    check_strategy(strategy)
    if partition not in SELECTION_PARTITIONS:
        raise MintError(f"partition {partition!r} is not one of {', '.join(SELECTION_PARTITIONS)}; use random (the "
                        "default) or kmeans")
    if not isinstance(second_round, (bool, np.bool_)):
        raise MintError(f"second_round must be true or false, got {second_round!r}")
    if n_jobs is not None:
        check_count(n_jobs, "n_jobs", 1, "the number of worker processes (None: every available core)")
    partition_size = check_count(partition_size, "partition_size", 2, "a part must hold at least 2 rows")
    limit = check_limit(memory_limit_bytes)
    chosen_alpha, curve = (float(alpha) if alpha is not None else None), None
    used = "none"
    if method == "random":
        order, gains, weights = _random_selection(plan)
        errors = _errors(features, plan, order, None, block) if compute_errors else {}
    else:
        est = _estimates(plan, features, n_jobs=n_jobs, block=block, partition_size=partition_size)
        used = choose_strategy(strategy, plan.n, est, limit, partition_size)
        check_memory(est[used], limit, dtype=plan.dtype, auto=plan.auto, n=min(plan.n, partition_size)
                     if used == "partitioned" else plan.n)
        if plan.auto:
            chosen_alpha, curve = _choose_alpha(features, plan, n_jobs=n_jobs, block=block, progress=progress)
            _log_stage("alpha_search", t0, " chose alpha %.6f (%s: %s)", chosen_alpha, alpha_method, curve.reason)
        # parts keep one matrix each unless asked: bounded memory is what partitioning is for
        cache = (_use_cache(chosen_alpha, cache_distances, est[used], limit) if used == "exact"
                 else cache_distances is True and chosen_alpha is not None)
        if used == "exact":
            order, gains, weights, errors = _exact(features, plan, chosen_alpha, cache=cache, block=block,
                                                   progress=progress, compute_errors=compute_errors)
            used = "cached" if cache else "blockwise"
        else:
            combo = alpha_combination(chosen_alpha) if chosen_alpha is not None else coef_combination(plan.coef)
            run = partial(_exact, cache=cache, block=block, progress=False)
            order, gains, weights, errors, n_parts = select_partitioned(
                features, plan, chosen_alpha, combo, partition_size=partition_size, run_exact=run,
                n_jobs=est["partitioned"]["workers"], compute_errors=compute_errors, block=block, progress=progress,
                part_cache=part_cache, partition=partition, second_round=second_round, memory_limit_bytes=limit)
            used = f"partitioned ({n_parts} parts)" if partition == "random" else f"partitioned ({n_parts} k-means parts)"
            if second_round and n_parts > 1:
                used = used[:-1] + ", GreeDi second round)"
    result = _result(plan, order=order, gains=gains, weights=weights, errors=errors, alpha=chosen_alpha, curve=curve,
                     strategy=used)
    _log_stage("total", t0)
    return result
