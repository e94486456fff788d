"""Benchmark of the MINT selection engine (docs/design.md section 3). Not a test: it prints numbers.

Synthetic clustered features: a Gaussian mixture per kind (fixed seed, separate cluster
labels for PT and IFL), rows L2-normalised. For one (N, D) it times `select_coreset` with
automatic alpha (plateau, ratios 0.05/0.1/0.15, preheat 0.3, both cores), the bare PT + IFL
distance computation (the floor), and reports peak memory and the stage times the engine logs.
`--exactness` instead compares the engine with a straightforward dense float64 implementation.
As `mint select` does, the memory available now is passed as the engine's memory limit.

    .venv/bin/python bench/selection.py --n 8000 --d 8192
    .venv/bin/python bench/selection.py --n 8000 --d 1024
    .venv/bin/python bench/selection.py --exactness --n 2000 --d 8192
    .venv/bin/python bench/selection.py --n 52000 --d 256 --alpha 0.97 --skip_floor   # full-N stage only
    .venv/bin/python bench/selection.py --n 52000 --d 256 --one_alpha 0.97             # one scan point
    .venv/bin/python bench/selection.py --partition_quality --n 20000 --d 1024 --partition_size 5000
    .venv/bin/python bench/selection.py --n 270000 --d 1024 --skip_floor
    .venv/bin/python bench/selection.py --float16_effect --n 8000 --d 1024
    .venv/bin/python bench/selection.py --vs_plain --n 4000 --d 1024
    .venv/bin/python bench/selection.py --golden --engine numpy     # hashes of 15 selections; equal for every engine
    .venv/bin/python bench/selection.py --n 1000000 --d 1024 --skip_floor --mmap_dir /tmp/feats_1m

`--vs_plain` times, in one run, a plain float64 numpy implementation of the whole automatic
selection whose lazy greedy is a Python heap with one numpy row operation per pop (the issue's
baseline), and the engine with `--engine` numba and numpy; it checks that they select the same.

`--golden` prints a hash of each of 15 seeded selections (indices, weights, gains, alpha, errors,
alpha curve; exact and partitioned, float32 and float64, plain, rounded and duplicated features):
run it on two versions of the engine, or with two `--engine`s, on one machine (distances come from
BLAS, whose rounding may differ between machines) and compare.

`--partition_quality` runs the exact engine (automatic alpha) and the partitioned one (the same
alpha) on the same features and compares them on the exact objective: the facility-location
value `F(T) = sum_i max_j S(i, j)` with `S = max(D) - D` over all N rows, `E_PT` and `E_IFL` over
all N rows (not the within-part upper bounds), and the overlap of the subsets; then the same for
k-means parts and for random parts with GreeDi's second round (`second_round=True`).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

RATIOS = [0.05, 0.1, 0.15]


def make_features(n: int, d: int, seed: int = 0, clusters=(64, 40), spread: float = 1.0, folder=None) -> dict:
    """PT and IFL features from two independent Gaussian mixtures, float32, rows normalised.
    Generated in row chunks so N = 52,000 x D = 8192 needs no float64 copy. With `folder`, they
    are written there as .npy files and returned memory-mapped (read-only), as a feature store's are."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind, n_clusters in zip(("pt", "ifl"), clusters):
        centers = rng.standard_normal((n_clusters, d), dtype=np.float32)
        # cluster sizes vary (Dirichlet weights), as real task families do
        labels = rng.choice(n_clusters, size=n, p=rng.dirichlet(np.ones(n_clusters)))
        path = None if folder is None else os.path.join(folder, f"{kind}.npy")
        X = (np.empty((n, d), dtype=np.float32) if path is None
             else np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d)))
        for s in range(0, n, 4096):
            e = min(s + 4096, n)
            block = rng.standard_normal((e - s, d), dtype=np.float32)
            block *= spread
            block += centers[labels[s:e]]
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            X[s:e] = block
        if path is not None:
            X.flush()
            del X
            X = np.load(path, mmap_mode="r")
        out[kind] = X
    return out


def _cpu_s() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _rss_reset() -> None:
    try:  # reset the kernel's peak-RSS counter (VmHWM) so the peak covers only what follows
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_peak_gib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / (1 << 20)
    return float("nan")


def _rss_now_gib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / (1 << 20)
    return float("nan")


def _available_bytes() -> int | None:
    """The limit `mint select` passes: the memory available now."""
    from mint.pipeline.select_step import available_bytes

    return available_bytes()


class _StageTimes(logging.Handler):
    """Collects the stage times `mint.selection.core` logs (records with `stage` and `seconds`)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "stage"):
            self.seconds[f"{record.stage}_s"] = record.seconds

    def __enter__(self):
        logging.getLogger("mint.selection.core").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("mint.selection.core").removeHandler(self)


def run_one_alpha(n: int, d: int, seed: int, alpha: float) -> dict:
    """The cost of one point of the alpha scan at this N: the pre-sample greedy for one alpha
    (the scan runs 174 of them, spread over the cores)."""
    from mint.selection.alpha import evaluate_alpha
    from mint.selection.distances import pairwise_distances

    feats = make_features(n, d, seed)
    n_pre = max(2, round(0.3 * n))
    pre = np.random.default_rng(seed).choice(n, n_pre, replace=False)
    t = time.perf_counter()
    d_pt, d_ifl = pairwise_distances(feats["pt"][pre]), pairwise_distances(feats["ifl"][pre])
    out = {"n": n, "d": d, "n_pre": n_pre, "k_pre": max(1, round(0.15 * n_pre)),
           "pre_distances_s": round(time.perf_counter() - t, 2)}
    cpu0, t = _cpu_s(), time.perf_counter()
    evaluate_alpha(d_pt, d_ifl, alpha, out["k_pre"])
    out["one_alpha_s"], out["one_alpha_cpu_s"] = round(time.perf_counter() - t, 2), round(_cpu_s() - cpu0, 2)
    return out


def _compare(feats, base, other, n: int) -> list[dict]:
    """`other` against `base` on the exact objective of `feats` (the alpha of `base`): F(T),
    E_PT and E_IFL over all rows, and the overlap, per ratio."""
    from mint.selection.distances import DistanceColumns, alpha_combination, combined_distances, prefix_min_sums

    sizes = [len(s.indices) for s in base.subsets.values()]
    D = combined_distances(feats, alpha_combination(base.alpha))
    top = float(D.max())
    e_d = {name: prefix_min_sums(DistanceColumns.from_matrix(D), res.order, sizes)
           for name, res in (("base", base), ("other", other))}
    del D
    errs = {name: {kind: prefix_min_sums(DistanceColumns.from_features(feats[kind], dtype=np.float32, block=2048),
                                         res.order, sizes) for kind in ("pt", "ifl")}
            for name, res in (("base", base), ("other", other))}
    rows = []
    for r in RATIOS:
        k = len(base.subsets[r].indices)
        overlap = len(set(base.subsets[r].indices.tolist()) & set(other.subsets[r].indices.tolist())) / k
        rows.append({"ratio": r, "k": k, "f_ratio": round((n * top - e_d["other"][k]) / (n * top - e_d["base"][k]), 5),
                     "e_pt_ratio": round(errs["other"]["pt"][k] / errs["base"]["pt"][k], 4),
                     "e_ifl_ratio": round(errs["other"]["ifl"][k] / errs["base"]["ifl"][k], 4),
                     "reported_e_pt_ratio": round(other.subsets[r].e_pt / errs["other"]["pt"][k], 4),
                     "overlap": round(overlap, 3)})
    return rows


def run_partition_quality(n: int, d: int, seed: int, n_jobs: int | None, partition_size: int) -> dict:
    from mint import select_coreset

    feats = make_features(n, d, seed)
    out = {"n": n, "d": d, "seed": seed, "partition_size": partition_size, "ratios": RATIOS}
    t = time.perf_counter()
    exact = select_coreset(feats, ratios=RATIOS, seed=seed, n_jobs=n_jobs, progress=False, strategy="exact",
                           memory_limit_bytes=_available_bytes())
    out["exact_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    part = select_coreset(feats, ratios=RATIOS, alpha=exact.alpha, seed=seed, n_jobs=n_jobs, progress=False,
                          strategy="partitioned", partition_size=partition_size)
    out["partitioned_s"] = round(time.perf_counter() - t, 1)
    out["alpha"], out["strategy"] = exact.alpha, part.settings["distance_strategy"]
    out["per_ratio"] = _compare(feats, exact, part, n)
    t = time.perf_counter()  # the same with k-means parts
    km = select_coreset(feats, ratios=RATIOS, alpha=exact.alpha, seed=seed, n_jobs=n_jobs, progress=False,
                        strategy="partitioned", partition_size=partition_size, partition="kmeans")
    out["kmeans_s"], out["kmeans_strategy"] = round(time.perf_counter() - t, 1), km.settings["distance_strategy"]
    out["per_ratio_kmeans"] = _compare(feats, exact, km, n)
    t = time.perf_counter()  # random parts with GreeDi's second round
    gr = select_coreset(feats, ratios=RATIOS, alpha=exact.alpha, seed=seed, n_jobs=n_jobs, progress=False,
                        strategy="partitioned", partition_size=partition_size, second_round=True)
    out["greedi_s"], out["greedi_strategy"] = round(time.perf_counter() - t, 1), gr.settings["distance_strategy"]
    out["per_ratio_greedi"] = _compare(feats, exact, gr, n)
    return out


def run_float16_effect(n: int, d: int, seed: int, n_jobs: int | None) -> dict:
    """The selection from float16-stored normalised features against float32 (automatic alpha
    on each), scored on the float32 features."""
    from mint import select_coreset

    feats = make_features(n, d, seed)
    half = {k: X.astype(np.float16) for k, X in feats.items()}
    kw = dict(ratios=RATIOS, seed=seed, n_jobs=n_jobs, progress=False, memory_limit_bytes=_available_bytes())
    full, reduced = select_coreset(feats, **kw), select_coreset(half, **kw)
    return {"n": n, "d": d, "seed": seed, "alpha_float32": full.alpha, "alpha_float16": reduced.alpha,
            "per_ratio": _compare(feats, full, reduced, n)}


def run_timing(n: int, d: int, seed: int, n_jobs: int | None, skip_floor: bool, alpha: float | None = None,
               strategy: str = "auto", partition_size: int = 20_000, mmap_dir=None, engine: str = "auto") -> dict:
    from mint import select_coreset
    from mint.selection.distances import alpha_combination, combined_distances

    t = time.perf_counter()
    feats = make_features(n, d, seed, folder=mmap_dir)
    gen_s = time.perf_counter() - t
    out = {"n": n, "d": d, "seed": seed, "generate_s": round(gen_s, 1), "load_before": os.getloadavg(),
           "features": "memory-mapped .npy" if mmap_dir else "in memory", "engine": engine}
    select_coreset({k: X[:64] for k, X in feats.items()}, ratios=RATIOS, engine=engine, n_jobs=1,
                   progress=False)  # compile or load the kernels outside the timing
    base = _rss_now_gib()
    _rss_reset()
    cpu0 = _cpu_s()
    t = time.perf_counter()
    with _StageTimes() as stages:
        res = select_coreset(feats, ratios=RATIOS, alpha=alpha, seed=seed, n_jobs=n_jobs, progress=False,
                             memory_limit_bytes=_available_bytes(), strategy=strategy, partition_size=partition_size,
                             engine=engine)
    out["strategy"] = res.settings["distance_strategy"]
    select_s = time.perf_counter() - t
    out["select_s"] = round(select_s, 2)
    # CPU seconds of this process and its scan workers: less sensitive than wall time to other
    # jobs on a shared machine (wall ~ cpu / 2 when both cores are ours)
    out["select_cpu_s"] = round(_cpu_s() - cpu0, 1)
    out["select_peak_rss_gib"] = round(_rss_peak_gib(), 2)
    out["features_rss_gib"] = round(base, 2)
    out["alpha"] = res.alpha
    out["stages_s"] = {k: round(v, 2) for k, v in stages.seconds.items()}
    if not skip_floor:
        _rss_reset()
        cpu0 = _cpu_s()
        t = time.perf_counter()
        D = combined_distances(feats, alpha_combination(0.5))  # both PT and IFL distances, all pairs
        floor_s = time.perf_counter() - t
        out["floor_distances_s"] = round(floor_s, 2)
        out["floor_cpu_s"] = round(_cpu_s() - cpu0, 1)
        del D
        out["select_over_floor"] = round(select_s / floor_s, 2)
    out["load_after"] = os.getloadavg()
    return out


# --------------------------------------------------------------------------- exactness


def _dense_distances(X: np.ndarray) -> np.ndarray:
    X = X.astype(np.float64)
    sq = np.einsum("ij,ij->i", X, X)
    D = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * (X @ X.T), 0))
    np.fill_diagonal(D, 0)
    return D


def _plain_lazy_greedy(S: np.ndarray, k: int) -> np.ndarray:
    """Lazy greedy with a Python heap and one numpy row operation per pop (S symmetric)."""
    import heapq

    cur = np.zeros(len(S))
    heap = [(-g, j) for j, g in enumerate(S.sum(axis=1).tolist())]
    heapq.heapify(heap)
    order: list[int] = []
    while len(order) < k:
        _, j = heapq.heappop(heap)
        g = float(np.maximum(S[j] - cur, 0).sum())
        if not heap or g >= -heap[0][0]:
            order.append(j)
            cur = np.maximum(cur, S[j])
        else:
            heapq.heappush(heap, (-g, j))
    return np.array(order)


def _dense_greedy(S: np.ndarray, k: int) -> np.ndarray:
    cur = np.zeros(len(S))
    chosen = np.zeros(len(S), bool)
    order = []
    for _ in range(k):
        g = np.maximum(S - cur[:, None], 0).sum(axis=0)
        g[chosen] = -np.inf
        j = int(np.argmax(g))
        order.append(j)
        chosen[j] = True
        cur = np.maximum(cur, S[:, j])
    return np.array(order)


def dense_reference(feats: dict, seed: int = 0, preheat: float = 0.3, greedy=_dense_greedy):
    """MINT selection written the plain way: dense float64 matrices, naive greedy (or `greedy`)."""
    from mint.selection.alpha import alpha_grid, detect_plateau

    n = len(feats["pt"])
    n_pre = max(2, round(preheat * n))
    pre = np.random.default_rng(seed).choice(n, n_pre, replace=False)
    k_pre = max(1, round(max(RATIOS) * n_pre))
    d_pt, d_ifl = _dense_distances(feats["pt"][pre]), _dense_distances(feats["ifl"][pre])
    alphas = alpha_grid()
    e_ifl = []
    for a in alphas:
        D = d_pt / a + d_ifl / (1 - a)
        order = greedy(D.max() - D, k_pre)
        e_ifl.append(d_ifl[:, order].min(axis=1).sum())
    a = float(alphas[detect_plateau(alphas, np.array(e_ifl)).index])
    D = _dense_distances(feats["pt"]) / a + _dense_distances(feats["ifl"]) / (1 - a)
    S = D.max() - D
    order = greedy(S, max(1, round(max(RATIOS) * n)))
    weights = {}
    for r in RATIOS:
        sel = order[: max(1, round(r * n))]
        weights[r] = np.bincount(np.argmax(S[:, sel], axis=1), minlength=len(sel)).astype(float)
    return a, order, weights, S


def run_vs_plain(n: int, d: int, seed: int, n_jobs: int | None) -> dict:
    """The engine (numba and numpy kernels) against the plain float64 lazy greedy with a heap,
    each on the whole automatic selection of the same features."""
    from mint import select_coreset

    feats = make_features(n, d, seed)
    out = {"n": n, "d": d, "seed": seed, "n_jobs": n_jobs, "load_before": os.getloadavg()}
    cpu0, t = _cpu_s(), time.perf_counter()
    a_ref, order_ref, _, _ = dense_reference(feats, seed, greedy=_plain_lazy_greedy)
    out["plain_s"], out["plain_cpu_s"] = round(time.perf_counter() - t, 2), round(_cpu_s() - cpu0, 2)
    out["plain_alpha"] = a_ref
    for engine in ("numba", "numpy"):
        select_coreset({k: X[:64] for k, X in feats.items()}, ratios=RATIOS, engine=engine, n_jobs=1,
                       progress=False)  # compile or load the kernels outside the timing
        with _StageTimes() as stages:
            cpu0, t = _cpu_s(), time.perf_counter()
            res = select_coreset(feats, ratios=RATIOS, seed=seed, n_jobs=n_jobs, progress=False, engine=engine,
                                 memory_limit_bytes=_available_bytes())
            seconds, cpu = time.perf_counter() - t, _cpu_s() - cpu0
        # CPU seconds (this process and its scan workers) matter on a shared machine: wall times
        # swing with the other jobs' load, CPU seconds much less
        out[engine] = {"select_s": round(seconds, 2), "select_cpu_s": round(cpu, 2),
                       "speedup_vs_plain": round(out["plain_s"] / seconds, 2),
                       "cpu_speedup_vs_plain": round(out["plain_cpu_s"] / cpu, 2), "alpha": res.alpha,
                       "overlap_with_plain": round(len(set(res.order.tolist()) & set(order_ref.tolist())) / len(order_ref), 3),
                       "stages_s": {k: round(v, 2) for k, v in stages.seconds.items()}}
    out["load_after"] = os.getloadavg()
    return out


def _golden_features(n: int, d: int, variant: str) -> dict:
    f = make_features(n, d, 0)
    if variant == "rounded":  # exact ties
        f = {k: np.round(X * 8) / 8 for k, X in f.items()}
        f = {k: (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float32)
             for k, X in f.items()}
    if variant == "dup":  # duplicated rows
        rng = np.random.default_rng(1)
        src, dst = rng.integers(0, n, n // 3), rng.integers(0, n, n // 3)
        f = {k: X.copy() for k, X in f.items()}
        for X in f.values():
            X[dst] = X[src]
    f["sft"] = f["pt"]
    return f


GOLDEN_CASES = {  # name: (n, d, features, settings)
    "auto_600": (600, 32, "plain", {}),
    "auto_600_f64": (600, 32, "plain", {"dtype": "float64"}),
    "auto_600_rounded": (600, 32, "rounded", {}),
    "auto_600_dup": (600, 32, "dup", {}),
    "golden_600": (600, 32, "plain", {"alpha_method": "golden"}),
    "scaled_600": (600, 32, "plain", {"alpha_method": "plateau_scaled"}),
    "coef_600": (600, 32, "plain", {"coef": (0.2, 1.0, 0.5)}),
    "craig_600": (600, 32, "plain", {"method": "craig"}),
    "auto_3000": (3000, 64, "plain", {}),
    "auto_3000_cached": (3000, 64, "plain", {"alpha": 0.95, "cache_distances": True}),
    "part_3000": (3000, 64, "plain", {"strategy": "partitioned", "partition_size": 1000}),
    "part_3000_rounded": (3000, 64, "rounded", {"strategy": "partitioned", "partition_size": 700}),
    "manual_9000": (9000, 16, "plain", {"ratios": [0.02, 0.05], "alpha": 0.97}),
    "manual_9000_f64": (9000, 16, "rounded", {"ratios": [0.02], "alpha": 0.5, "dtype": "float64"}),
    "part_17000": (17000, 16, "plain", {"ratios": [0.01, 0.02], "alpha": 0.9, "strategy": "partitioned",
                                        "partition_size": 8500}),
}


def result_digest(res) -> str:
    import hashlib

    h = hashlib.sha256()
    h.update(np.ascontiguousarray(res.order).tobytes())
    h.update(np.ascontiguousarray(res.gains).tobytes())
    h.update(repr(res.alpha).encode())
    for r in sorted(res.subsets):
        s = res.subsets[r]
        h.update(s.indices.tobytes())
        h.update(s.weights.tobytes())
        h.update(repr((s.e_pt, s.e_ifl)).encode())
    if res.curve is not None:
        h.update(res.curve.alpha.tobytes())
        h.update(res.curve.e_pt.tobytes())
        h.update(res.curve.e_ifl.tobytes())
    return h.hexdigest()[:16]


def run_golden(engine: str, max_n: int) -> dict:
    from mint import select_coreset

    out = {"engine": engine, "hashes": {}}
    for name, (n, d, variant, kw) in GOLDEN_CASES.items():
        if n <= max_n:
            kw = {"ratios": RATIOS, **kw}
            res = select_coreset(_golden_features(n, d, variant), n_jobs=1, progress=False, seed=0, engine=engine, **kw)
            out["hashes"][name] = result_digest(res)
    out["n"] = max(n for n, *_ in GOLDEN_CASES.values() if n <= max_n)
    return out


def run_exactness(n: int, d: int, seed: int, n_jobs: int | None) -> dict:
    from mint import select_coreset

    feats = make_features(n, d, seed)
    t = time.perf_counter()
    a_ref, order_ref, w_ref, S_ref = dense_reference(feats, seed)
    ref_s = time.perf_counter() - t
    out = {"n": n, "d": d, "seed": seed, "reference_s": round(ref_s, 1), "alpha_reference": a_ref}
    for dtype in ("float64", "float32"):
        t = time.perf_counter()
        res = select_coreset(feats, ratios=RATIOS, seed=seed, dtype=dtype, n_jobs=n_jobs, progress=False,
                             memory_limit_bytes=_available_bytes())
        row = {"select_s": round(time.perf_counter() - t, 2), "alpha": res.alpha, "same_alpha": res.alpha == a_ref}
        agree = np.asarray(res.order) == order_ref[: len(res.order)]
        row["same_order"] = bool(agree.all())
        row["first_disagreement"] = int(np.argmin(agree)) if not agree.all() else None
        row["same_weights"] = all(np.array_equal(res.subsets[r].weights, w_ref[r]) for r in RATIOS)
        # value of each subset under the float64 reference objective, relative to the reference subset
        rel = {}
        for r in RATIOS:
            k = len(res.subsets[r].indices)
            f_ref = S_ref[:, order_ref[:k]].max(axis=1).sum()
            f_eng = S_ref[:, res.subsets[r].indices].max(axis=1).sum()
            rel[str(r)] = float((f_ref - f_eng) / f_ref)
        row["fl_value_rel_gap"] = rel
        out[dtype] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8000)
    p.add_argument("--d", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_jobs", type=int, default=None, help="alpha-scan workers (default: all cores)")
    p.add_argument("--exactness", action="store_true", help="compare with a dense float64 implementation")
    p.add_argument("--skip_floor", action="store_true", help="do not time the bare distance computation")
    p.add_argument("--alpha", type=float, default=None, help="manual alpha: time only the full-N stage")
    p.add_argument("--one_alpha", type=float, default=None, help="time one point of the pre-sample scan")
    p.add_argument("--strategy", default="auto", choices=["auto", "exact", "partitioned"])
    p.add_argument("--partition_size", type=int, default=20_000)
    p.add_argument("--partition_quality", action="store_true", help="partitioned against exact on the exact objective")
    p.add_argument("--mmap_dir", default=None, help="write the features there as .npy and select from memory maps")
    p.add_argument("--float16_effect", action="store_true", help="float16-stored features against float32")
    p.add_argument("--vs_plain", action="store_true", help="the engine against a plain float64 heap lazy greedy")
    p.add_argument("--golden", action="store_true", help="hashes of 15 seeded selections (compare two versions)")
    p.add_argument("--golden_max_n", type=int, default=17_000, help="--golden: only the cases with at most this N")
    p.add_argument("--engine", default="auto", choices=["auto", "numba", "numpy"], help="timing: the engine's kernels")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.exactness:
        result = run_exactness(args.n, args.d, args.seed, args.n_jobs)
    elif args.golden:
        result = run_golden(args.engine, args.golden_max_n)
    elif args.vs_plain:
        result = run_vs_plain(args.n, args.d, args.seed, args.n_jobs)
    elif args.float16_effect:
        result = run_float16_effect(args.n, args.d, args.seed, args.n_jobs)
    elif args.partition_quality:
        result = run_partition_quality(args.n, args.d, args.seed, args.n_jobs, args.partition_size)
    elif args.one_alpha is not None:
        result = run_one_alpha(args.n, args.d, args.seed, args.one_alpha)
    else:
        result = run_timing(args.n, args.d, args.seed, args.n_jobs, args.skip_floor, args.alpha, args.strategy,
                            args.partition_size, args.mmap_dir, args.engine)
    result["cpus"] = len(os.sched_getaffinity(0))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
