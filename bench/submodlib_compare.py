"""Benchmark: mint's lazy greedy against submodlib (the facility-location library InstructLab's
subset selection uses) on the same dense facility-location problem. Not a test: it prints numbers.

The problem: synthetic clustered PT and IFL features (`bench/selection.py`'s generator), the
MINT combined distance at a fixed alpha, `S = max(D) - D` (float32, N x N), budget k for the
largest ratio; smaller ratios are prefixes of the greedy order in both libraries. Each optimiser
is timed on the same matrix (the matrix itself is not timed) and scored with the same
`F(T) = sum_i max_{j in T} S(i, j)` in float64.

submodlib is not a dependency of mint; run this from a separate environment that has it:

    python3 -m venv /tmp/smvenv && /tmp/smvenv/bin/pip install submodlib-py
    PYTHONPATH=src /tmp/smvenv/bin/python bench/submodlib_compare.py --n 10000 --d 1024
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

RATIOS = (0.05, 0.1, 0.15)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--alpha", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from selection import make_features  # bench/selection.py

    from mint.selection.distances import alpha_combination, combined_distances
    from mint.selection.facility import facility_value, lazy_greedy, similarity_from_distance

    feats = make_features(args.n, args.d, args.seed)
    S = combined_distances(feats, alpha_combination(args.alpha))
    similarity_from_distance(S, out=S)
    ks = [max(1, round(r * args.n)) for r in RATIOS]
    rows = {}

    t = time.perf_counter()
    order, _ = lazy_greedy(S, max(ks), symmetric=True, nonnegative=True)
    rows["mint lazy_greedy (exact)"] = (time.perf_counter() - t, [int(j) for j in order])

    try:
        from submodlib import FacilityLocationFunction
    except ImportError:  # the mint half ran: say what the comparison needs
        print(json.dumps({"n": args.n, "mint_seconds": round(rows["mint lazy_greedy (exact)"][0], 2),
                          "submodlib": "not installed: pip install submodlib-py (in a separate environment)"}))
        return 2

    for optimizer in ("LazyGreedy", "LazierThanLazyGreedy"):
        obj = FacilityLocationFunction(n=args.n, mode="dense", sijs=S, separate_rep=False)
        t = time.perf_counter()
        picked = obj.maximize(budget=max(ks), optimizer=optimizer, stopIfZeroGain=False, stopIfNegativeGain=False,
                              verbose=False, show_progress=False)
        rows[f"submodlib {optimizer}"] = (time.perf_counter() - t, [int(j) for j, _ in picked])

    exact = {k: facility_value(S, np.array(rows["mint lazy_greedy (exact)"][1][:k])) for k in ks}
    out = {"n": args.n, "d": args.d, "alpha": args.alpha, "k": ks, "cpus": len(os.sched_getaffinity(0)), "rows": []}
    for name, (seconds, picks) in rows.items():
        values = {k: facility_value(S, np.array(picks[:k])) for k in ks}
        out["rows"].append({"optimizer": name, "seconds": round(seconds, 2),
                            "value_vs_mint": {str(k): round(values[k] / exact[k], 6) for k in ks},
                            "same_order_as_mint": picks == rows["mint lazy_greedy (exact)"][1]})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
