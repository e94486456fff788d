"""Do gradient features cluster by answer length? Features of a sample from each third of a pool.

Why: at 10% of ni_mix, MINT's subsets hold answers of 9.0 tokens on average, CRAIG's 5.7 and
random's 11.9 (docs/benchmarks.md, the evidence benchmark). This probe samples `--per_third`
records from each third of the pool by answer tokens, computes their gradient features (the
library's `compute_features`, Adam-preconditioned by `--warmup`: a `mint warmup` folder or any
training folder with its AdamW state) and reports, per view (sft, pt, ifl):

- within-third mean cosine and the mean distance to the nearest other record of the same third
  (how tightly a third clusters: a tight third is covered by few medoids);
- each third's mean cosine to the whole sample (how central it is);
- which thirds a `--ratio` facility-location selection of the sample picks (MINT at `--alpha`,
  CRAIG on the SFT view) and how its cluster-size weights fall.

    .venv/bin/python bench/length_probe.py --threads 2 \\
        --warmup runs/bench_quality/ni_mix-cea0777e5e/train/ba84b96e34bbc40f
    .venv/bin/python bench/length_probe.py --smoke --model TINY_MODEL_DIR --pool P   # seconds; the test suite

Without `--warmup` it warms an adapter up first (`run_warmup`, a random 5% of the pool, 2 epochs
at lr 1e-3 as in bench/quality.py). The result goes to `bench/results/length_probe/<tag>.json`
(with its provenance) and the table to stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from quality import length_thirds  # noqa: E402  the thirds of the benchmark's length table
POOL = REPO.parent / "shared" / "data" / "ni_mix" / "pool.jsonl"
VIEWS = ("sft", "pt", "ifl")


def view_stats(X, third) -> dict:
    """Within-third mean cosine, nearest-neighbour distance inside the third, and mean cosine
    to every other record of the sample, per third, for L2-normalised rows X."""
    import numpy as np

    X = np.asarray(X, dtype=np.float64)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = X @ X.T
    off = ~np.eye(len(X), dtype=bool)
    out = []
    for b in range(3):
        m = np.flatnonzero(third == b)
        inner = C[np.ix_(m, m)]
        inner_off = inner[off[np.ix_(m, m)]]
        dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * inner))
        np.fill_diagonal(dist, np.inf)
        to_all = (C[m].sum(axis=1) - 1.0) / (len(X) - 1)  # the row's own cosine (1) left out
        out.append({"records": int(len(m)), "within_cos": float(inner_off.mean()),
                    "nn_distance": float(dist.min(axis=1).mean()), "cos_to_all": float(to_all.mean())})
    return {"thirds": out}


def picks_by_third(features, third, ratio: float, **selection) -> dict:
    """A facility-location selection of the sample: picks and summed weights per third."""
    import numpy as np

    from mint import select_coreset

    res = select_coreset(features, ratios=[ratio], progress=False, n_jobs=1, **selection)
    sub = res.subsets[ratio]
    at = third[sub.indices]
    return {"alpha": res.alpha, "k": int(len(sub.indices)), "picks": np.bincount(at, minlength=3).tolist(),
            "weights": [float(sub.weights[at == b].sum()) for b in range(3)]}


def markdown(result: dict) -> str:
    cuts = result["cuts"]
    names = [f"< {cuts[0]:g}", f"{cuts[0]:g} to < {cuts[1]:g}", f">= {cuts[1]:g}"]
    lines = [f"answer-length thirds (tokens): {', '.join(names)}; {result['per_third']} records each",
             "", "| view | third | within-third cosine | nearest same-third distance | cosine to the sample |",
             "|---|---|---:|---:|---:|"]
    for view in VIEWS:
        for name, s in zip(names, result["views"][view]["thirds"]):
            lines.append(f"| {view} | {name} | {s['within_cos']:+.3f} | {s['nn_distance']:.3f} | {s['cos_to_all']:+.3f} |")
    lines += ["", f"| selection of the sample (ratio {result['ratio']:g}) | picks per third | weight per third |",
              "|---|---|---|"]
    for name, s in result["selections"].items():
        lines.append(f"| {name} | {' / '.join(map(str, s['picks']))} | {' / '.join(f'{w:g}' for w in s['weights'])} |")
    return "\n".join(lines)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", default=str(POOL), help="JSON/JSONL records (a `task` field is dropped)")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--warmup", help="warm-up or training folder (adapter + optimizer.safetensors); default: warm up")
    p.add_argument("--per_third", type=int, help="records per third (default 50; smoke 5)")
    p.add_argument("--proj_dim", type=int, default=1024)
    p.add_argument("--max_length", type=int, default=768)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=0.95, help="MINT's alpha (plateau chose 0.951 on the whole ni_mix pool)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="a few records, a tiny projection: seconds on a tiny model")
    p.add_argument("--tag", help="names the result file (default: the pool's folder name)")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "length_probe"))
    p.add_argument("--results_dir", default=str(REPO / "bench" / "results" / "length_probe"))
    args = p.parse_args(argv)
    if args.smoke:
        args.proj_dim, args.max_length, args.batch_size = 32, 96, 2
        args.ratio = 0.2
    args.per_third = args.per_third or (5 if args.smoke else 50)
    args.tag = args.tag or Path(args.pool).resolve().parent.name + ("-smoke" if args.smoke else "")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import numpy as np
    import torch

    from mint._io import atomic_write_json, atomic_write_text, sha256_file, versions
    from mint.model.data import load_examples, tokenize_examples
    from mint.model.features import compute_features
    from mint.model.modeling import adapter_sha256, load_tokenizer
    from mint.model.store import load_features
    from mint.model.warmup import run_warmup
    from mint.records import read_records

    torch.set_num_threads(args.threads)
    pool = Path(args.pool)
    work = Path(args.work_dir) / args.tag
    work.mkdir(parents=True, exist_ok=True)
    records = [{k: v for k, v in r.items() if k != "task"} for r in read_records(pool)]
    text = {"max_length": args.max_length, "long_prompts": "truncate"}
    everything = work / "pool.jsonl"
    atomic_write_text(everything, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tok = tokenize_examples(load_examples(everything), load_tokenizer(args.model), **text)
    lengths = np.array([len(t.response_ids) for t in tok])
    third, cuts = length_thirds(lengths)
    sizes = np.bincount(third, minlength=3)
    if len(cuts) < 2:
        raise SystemExit(f"{pool}: the answer lengths have too few distinct values for three thirds "
                         f"(cuts {cuts.tolist()}); use a pool with more varied answers")
    if sizes.min() < max(2, args.per_third):
        raise SystemExit(f"{pool}: the answer-length thirds hold {sizes.tolist()} records; --per_third "
                         f"{args.per_third} needs at least that many (and 2) in each, so lower it")
    rng = np.random.default_rng(args.seed)
    pick = np.concatenate([np.sort(rng.choice(np.flatnonzero(third == b), args.per_third, replace=False))
                           for b in range(3)])
    sample = work / "sample.jsonl"
    atomic_write_text(sample, "".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in pick))
    warm = Path(args.warmup) if args.warmup else work / "warmup"
    if not args.warmup:
        run_warmup(args.model, everything, warm, sample_ratio=0.05 if not args.smoke else 0.25, epochs=2.0,
                   lr=1e-3, batch_size=4, seed=args.seed, device="cpu", overwrite=True, progress=True, **text)
    grads = compute_features(args.model, sample, warm, work / "grads", proj_dim=args.proj_dim,
                             batch_size=args.batch_size, seed=args.seed, device="cpu", overwrite=True, progress=True,
                             **text)
    feats = {k: np.asarray(v) for k, v in load_features(grads, dim=args.proj_dim).items() if k in VIEWS}
    lab = third[pick]
    result = {
        "pool": str(pool), "pool_sha256": sha256_file(pool), "records": len(records), "cuts": cuts.tolist(),
        "third_sizes": sizes.tolist(), "per_third": args.per_third, "ratio": args.ratio,
        "mean_answer_tokens": [float(lengths[pick][lab == b].mean()) for b in range(3)],
        "warmup": str(warm), "warmup_adapter_sha256": adapter_sha256(warm / "adapter"), "views": {v: view_stats(feats[v], lab) for v in VIEWS},
        "selections": {f"mint (alpha {args.alpha:g})": picks_by_third(feats, lab, args.ratio, alpha=args.alpha),
                       "craig (sft view)": picks_by_third(feats, lab, args.ratio, method="craig")},
        "settings": {k: str(v) for k, v in sorted(vars(args).items()) if k not in ("work_dir", "results_dir")},
        "written_by": " ".join(["bench/length_probe.py", *(sys.argv[1:] if argv is None else argv)]),
        "versions": versions(),
    }
    table = markdown(result)
    out = Path(args.results_dir)
    atomic_write_json(out / f"{args.tag}.json", result)
    atomic_write_text(out / f"{args.tag}.md", table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    from mint.errors import MintError

    try:
        raise SystemExit(main())
    except MintError as e:  # bad input or a stale work folder: the message and its fix, not a traceback
        raise SystemExit(f"length_probe.py: error: {e}") from None
