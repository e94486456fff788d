"""Benchmark: the sparse JL projection (`sjlt`) against the dense Rademacher tiles.

Two parts (both by default; `--part speed` or `--part distortion` for one):

* speed: one row of `--grad_dim` entries (default 109M: Llama-3-8B with LoRA r=128 on
  q,k,v,o) projected to `--proj_dim` with sjlt (the first call, which draws the hashes, and the
  steady state, hashes cached, median of 3); then the same `--rows` rows at `--compare_grad_dim`
  (default 4M) with the dense tiles and with sjlt in the same run, and the ratio.
* distortion: real gradient features (SFT and PT, Adam-preconditioned, unprojected) of the first
  `--n` records of `--data` with `--model` at `--max_length`; each projection (dense, and sjlt
  for every `--s_values`) to `--proj_dim`: the ratios ||P(a - b)|| / ||a - b|| over all pairs of
  rows (SFT, PT and IFL = SFT - PT), and the MINT coreset (`mint.select_coreset`, ratio
  `--ratio`, automatic alpha) against the one selected from the unprojected features: overlap,
  and the facility-location value F(T) = sum_i max_{j in T} S(i, j) of each coreset on the
  unprojected features (S = max(D_a) - D_a, at the alpha chosen on them).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/projection.py --threads 2
    .venv/bin/python bench/projection.py --smoke        # seconds: tiny sizes (the test suite runs it)
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["all", "speed", "distortion"], default="all")
    p.add_argument("--grad_dim", type=int, default=109_051_904)
    p.add_argument("--compare_grad_dim", type=int, default=4_000_000)
    p.add_argument("--rows", type=int, default=2, help="rows of the dense-vs-sjlt comparison")
    p.add_argument("--proj_dim", type=int, default=8192)
    p.add_argument("--s", type=int, default=2, help="sjlt non-zeros per coordinate (speed part)")
    p.add_argument("--s_values", type=int, nargs="+", default=[1, 2, 4], help="sjlt s values (distortion part)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "alpaca_gpt4" / "pool.jsonl"))
    p.add_argument("--n", type=int, default=96, help="records of the distortion part")
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_projection"))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.grad_dim, args.compare_grad_dim, args.proj_dim, args.n = 300_000, 50_000, 256, 12
        args.s_values = [1, 2]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "proj_dim": args.proj_dim, "torch": torch.__version__}
    if args.part in ("all", "speed"):
        results["speed"] = speed(args)
    if args.part in ("all", "distortion"):
        results["distortion"] = distortion(args)
    print(json.dumps(results))
    return 0


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def speed(args) -> dict:
    import torch

    from mint.model.projection import make_projector

    gen = torch.Generator().manual_seed(0)
    out = {"grad_dim": args.grad_dim, "s": args.s}
    row = torch.randn(1, args.grad_dim, generator=gen)
    sjlt = make_projector(args.grad_dim, args.proj_dim, 0, kind="sjlt", sjlt_s=args.s, cache_bytes=2 << 30)
    _, out["sjlt_first_call_s"] = _timed(lambda: sjlt.project(row))
    out["sjlt_row_s"] = statistics.median(_timed(lambda: sjlt.project(row))[1] for _ in range(3))
    del row, sjlt
    x = torch.randn(args.rows, args.compare_grad_dim, generator=gen)
    dense = make_projector(args.compare_grad_dim, args.proj_dim, 0, kind="rademacher", cache_bytes=1 << 30)
    sparse = make_projector(args.compare_grad_dim, args.proj_dim, 0, kind="sjlt", sjlt_s=args.s)
    _, out["dense_compare_s"] = _timed(lambda: dense.project(x))
    _, out["sjlt_compare_first_call_s"] = _timed(lambda: sparse.project(x))
    out["sjlt_compare_s"] = statistics.median(_timed(lambda: sparse.project(x))[1] for _ in range(3))
    out.update(compare_grad_dim=args.compare_grad_dim, rows=args.rows,
               speedup=out["dense_compare_s"] / out["sjlt_compare_s"],
               speedup_first_call=out["dense_compare_s"] / out["sjlt_compare_first_call_s"])
    return out


def _raw_features(args) -> tuple:
    """(sft, pt) unprojected Adam features (n, grad_dim) of the first n records, float32 numpy."""
    from mint.model.data import collate_ids, load_examples, tokenize_examples
    from mint.model.features import _adam_state
    from mint.model.gradients import LoraGradCollector, Preconditioner, shard_features
    from mint.model.modeling import lora_named_parameters, load_lora, load_model_and_tokenizer
    from mint.model.projection import make_projector
    from mint.model.warmup import load_warmup_state, run_warmup

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"records{args.n}.jsonl"
    if not data.exists():
        with open(args.data, encoding="utf-8") as f:
            data.write_text("".join(itertools.islice(f, args.n)), encoding="utf-8")
    warm = run_warmup(args.model, data, work / f"warmup{args.n}", sample_ratio=0.125, epochs=1, batch_size=4,
                      lr=1e-4, max_length=args.max_length, long_prompts="truncate", device="cpu", progress=False)
    model, tok = load_model_and_tokenizer(args.model, device="cpu")
    model = load_lora(model, warm / "adapter", trainable=True)
    model.eval()
    tokenized = tokenize_examples(load_examples(data), tok, max_length=args.max_length, long_prompts="truncate",
                                  progress=False)
    collector = LoraGradCollector(model)
    keys = [k for k, _ in lora_named_parameters(model)]
    state = _adam_state(load_warmup_state(warm), warm, keys)
    pre = Preconditioner("adam", **{k: state[k] for k in ("exp_avg", "exp_avg_sq", "betas", "eps")})
    rows = shard_features(model, tokenized, collector=collector, preconditioner=pre, batch_size=8,
                          projector=make_projector(collector.grad_dim, None, 0), **collate_ids(tok))
    return rows["sft_full"], rows["pt_full"]


def _pair_ratios(raw, projected):
    """||P(a - b)|| / ||a - b|| over all pairs of rows (float64)."""
    import numpy as np

    def dists(x):
        x = x.astype(np.float64)
        sq = (x * x).sum(1)
        d2 = sq[:, None] + sq[None, :] - 2 * x @ x.T
        return np.sqrt(np.maximum(d2, 0))

    iu = np.triu_indices(raw.shape[0], 1)
    return dists(projected)[iu] / dists(raw)[iu]


def _fl_value(feats: dict, alpha: float, indices) -> float:
    """F(T) = sum_i max_{j in T} S(i, j), S = max(D) - D, D = d_PT / a + d_IFL / (1 - a)."""
    import numpy as np

    def dists(x):
        x = x.astype(np.float64)
        sq = (x * x).sum(1)
        return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))

    d = dists(feats["pt"]) / alpha + dists(feats["ifl"]) / (1 - alpha)
    s = d.max() - d
    return float(s[:, indices].max(axis=1).sum())


def distortion(args) -> dict:
    import numpy as np
    import torch

    from mint import select_coreset
    from mint.model.projection import make_projector
    from mint.model.store import normalize_rows

    (sft, pt), raw_s = _timed(lambda: _raw_features(args))
    raw = {"sft": sft, "pt": pt, "ifl": sft - pt}
    n, grad_dim = sft.shape
    out = {"n": n, "grad_dim": grad_dim, "max_length": args.max_length, "features_s": raw_s, "ratio": args.ratio}
    both = torch.from_numpy(np.concatenate([sft, pt]))

    def select(feats):
        normalized = {k: normalize_rows(v) for k, v in feats.items()}
        result = select_coreset(normalized, ratios=[args.ratio], seed=0, n_jobs=1, progress=False)
        return result, normalized

    exact, exact_norm = select(raw)
    exact_idx = exact.subsets[args.ratio].indices
    fl_exact = _fl_value(exact_norm, exact.alpha, exact_idx)
    rng = np.random.default_rng(0)
    random_fl = [_fl_value(exact_norm, exact.alpha, rng.choice(n, len(exact_idx), replace=False)) for _ in range(20)]
    out["exact"] = {"alpha": exact.alpha, "k": len(exact_idx), "fl": fl_exact, "fl_random_mean": float(np.mean(random_fl))}
    kinds = [("dense", "rademacher", None)] + [(f"sjlt_s{s}", "sjlt", s) for s in args.s_values]
    for name, kind, s in kinds:
        projector = make_projector(grad_dim, args.proj_dim, 0, kind=kind, sjlt_s=s or 2, cache_bytes=1 << 30)
        projected, secs = _timed(lambda: projector.project(both)[args.proj_dim].numpy())
        feats = {"sft": projected[:n], "pt": projected[n:], "ifl": projected[:n] - projected[n:]}
        entry = {"project_s": secs}
        for k in ("sft", "pt", "ifl"):
            r = _pair_ratios(raw[k], feats[k])
            entry[f"{k}_ratio"] = {"mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()),
                                   "max": float(r.max())}
        result, _ = select(feats)
        idx = result.subsets[args.ratio].indices
        entry.update(alpha=result.alpha, overlap=len(set(idx.tolist()) & set(exact_idx.tolist())) / len(exact_idx),
                     fl_on_exact=_fl_value(exact_norm, exact.alpha, idx))
        entry["fl_relative"] = entry["fl_on_exact"] / fl_exact
        out[name] = entry
    return out


if __name__ == "__main__":
    raise SystemExit(main())
