"""Benchmark: does MINT select better subsets than the baselines, and which automatic-alpha
detector (plateau, plateau_scaled, golden) selects better ones? Real data, real model.

One pipeline on a seeded sample of a pool (default: ni_mix, 48 skewed tasks) with
SmolLM2-135M-Instruct: warm-up LoRA (5%), gradient features, then for one ratio the subsets of
mint (alpha by plateau / plateau_scaled / golden), craig, pt, ifl and random (several seeds).
Each subset trains a LoRA adapter with the same settings (coreset weights in the loss; random
subsets with unit weights), and the base model and every adapter are evaluated on a held-out
file (response-token SFT loss: mean over examples and macro average over tasks). Per-task
coverage of each subset is reported too (the `task` field is removed from the file the
pipeline reads, so selection cannot see it; it is used only for coverage and evaluation).

Every stage reuses its outputs when they match (warm-up, features and trainings skip through
their manifests, evaluations through the adapter hash), so re-running after a crash is cheap.

    .venv/bin/python bench/quality.py --n 40 --dev_per_task 1 --epochs 1 --random_seeds 0 1 --tag smoke --check_base  # smoke
    .venv/bin/python bench/quality.py --random_seeds 0 1 2 3 4 5 --extra_train_seeds 1 2     # the recorded run
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NI_MIX = REPO.parent / "shared" / "data" / "ni_mix"
MODEL = "smollm2-135m-instruct"
log = logging.getLogger("bench.quality")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _write_if_changed(path: Path, text: str) -> None:
    """Keep the file (and its mtime/fingerprint) when the content is already there."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    from mint._io import atomic_write_text

    atomic_write_text(path, text)


def prepare_data(args, work: Path) -> tuple[Path, Path, list[str]]:
    """A seeded sample of the pool (without `task`), its task list (sidecar), and a seeded
    per-task sample of the held-out file (with `task`, for the per-task breakdown)."""
    import numpy as np

    from mint.records import read_records

    pool = read_records(args.pool)
    rng = np.random.default_rng(args.seed)
    n = min(args.n, len(pool))
    idx = np.sort(rng.choice(len(pool), size=n, replace=False))
    tasks = [str(pool[i].get("task")) for i in idx]
    lines = [json.dumps({k: v for k, v in pool[i].items() if k != "task"}, ensure_ascii=False) for i in idx]
    train_path = work / "train.jsonl"
    _write_if_changed(train_path, "\n".join(lines) + "\n")
    _write_if_changed(work / "train_tasks.json", json.dumps({"pool": str(args.pool), "source_index": idx.tolist(),
                                                             "task": tasks}))
    dev = read_records(args.dev)
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(dev):
        by_task.setdefault(str(r.get("task")), []).append(i)
    drng = np.random.default_rng(args.seed + 1)
    chosen = sorted(int(j) for t in sorted(by_task) for j in
                    drng.choice(by_task[t], size=min(args.dev_per_task, len(by_task[t])), replace=False))
    dev_path = work / "dev.jsonl"
    _write_if_changed(dev_path, "\n".join(json.dumps(dev[j], ensure_ascii=False) for j in chosen) + "\n")
    log.info("data: %d of %d pool records (%d tasks present), %d held-out records (%d per task)",
             n, len(pool), len(set(tasks)), len(chosen), args.dev_per_task)
    return train_path, dev_path, tasks


def coverage(tasks: list[str], indices, weights) -> dict:
    """How many tasks the subset touches, how many of the rare ones (the half of the tasks
    present in the pool sample with the fewest examples), and the total-variation distance
    between the subset's weighted task mix and the pool sample's."""
    pool_count = Counter(tasks)
    present = sorted(pool_count, key=lambda t: (pool_count[t], t))
    rare = set(present[: len(present) // 2])
    sub = [tasks[i] for i in indices]
    covered = set(sub)
    wmix: Counter = Counter()
    for i, w in zip(indices, weights):
        wmix[tasks[i]] += float(w)
    total_w, n = sum(wmix.values()), len(tasks)
    tv = 0.5 * sum(abs(wmix[t] / total_w - pool_count[t] / n) for t in pool_count)
    return {"tasks_covered": len(covered), "tasks_present": len(present), "rare_covered": len(covered & rare),
            "rare_tasks": len(rare), "tv_weighted_mix": round(tv, 4)}


def select_all(args, features, n: int) -> list[dict]:
    """The subsets to compare, in table order (each: label, method, indices, weights, alpha, errors)."""
    import numpy as np

    from mint import select_coreset

    specs = [("mint/" + am, dict(method="mint", alpha_method=am)) for am in args.alpha_methods]
    specs += [(m, dict(method=m)) for m in args.baselines]
    specs += [(f"random/seed{s}", dict(method="random", seed=s)) for s in args.random_seeds]
    out = []
    for label, kw in specs:
        t0 = time.perf_counter()
        kw.setdefault("seed", args.seed)
        res = select_coreset(features, ratios=[args.ratio], preheat_ratio=args.preheat_ratio, n_jobs=1,
                             progress=False, **kw)
        sub = res.subsets[args.ratio]
        idx, w = np.asarray(sub.indices), np.asarray(sub.weights, dtype=np.float64)
        if kw["method"] == "random":
            w = np.ones(idx.size)  # unit weights, as the random baseline of `mint run`
        zero = int((w <= 0).sum())
        if zero:
            # a selected element nobody is nearest to (a duplicate) stands for no one: leave it out of training
            log.warning("%s: %d selected examples have weight 0; they are left out of training", label, zero)
            idx, w = idx[w > 0], w[w > 0]
        out.append({"label": label, "method": kw["method"], "alpha": res.alpha, "indices": idx, "weights": w,
                    "zero_weight": zero, "e_pt": sub.e_pt, "e_ifl": sub.e_ifl,
                    "alpha_reason": getattr(res.curve, "reason", None) if res.curve is not None else None,
                    "select_s": round(time.perf_counter() - t0, 2)})
        log.info("select %-22s k=%d alpha=%s (%.1f s)", label, idx.size,
                 None if res.alpha is None else round(res.alpha, 4), out[-1]["select_s"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", default=str(NI_MIX / "pool.jsonl"))
    p.add_argument("--dev", default=str(NI_MIX / "dev_eval.jsonl"))
    p.add_argument("--n", type=int, default=300, help="pool records (seeded sample)")
    p.add_argument("--dev_per_task", type=int, default=1, help="held-out records per task (seeded sample)")
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--proj_dim", type=int, default=1024)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--alpha_methods", nargs="+", default=["plateau", "plateau_scaled", "golden"])
    p.add_argument("--baselines", nargs="+", default=["craig", "pt", "ifl"])
    p.add_argument("--random_seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--extra_train_seeds", type=int, nargs="*", default=[],
                   help="train the first subset again with these seeds (the training-noise floor)")
    p.add_argument("--preheat_ratio", type=float, default=0.3)
    p.add_argument("--warmup_ratio", type=float, default=0.05)
    p.add_argument("--warmup_epochs", type=float, default=2.0)
    p.add_argument("--warmup_lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=2, help="examples per forward pass (small: less padding on CPU)")
    p.add_argument("--grad_accum", type=int, default=4)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    p.add_argument("--check_base", action="store_true",
                   help="evaluate the base model again after the adapters (checks that they were removed)")
    p.add_argument("--tag", default="ni_mix", help="names the work folder and the result files")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_quality"))
    p.add_argument("--results_dir", default=str(REPO / "bench" / "results"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    from mint._io import atomic_write_json, atomic_write_text
    from mint.model.evaluate import evaluate
    from mint.model.features import compute_features
    from mint.model.modeling import LoraSettings, load_model_and_tokenizer
    from mint.model.store import load_features
    from mint.model.train import read_train_manifest, train_lora
    from mint.model.warmup import run_warmup

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    stage_s: dict[str, float] = {}
    front = {k: getattr(args, k) for k in ("pool", "n", "seed", "max_length", "proj_dim", "warmup_ratio",
                                           "warmup_epochs", "warmup_lr", "lora_r")}
    work = Path(args.work_dir) / f"{args.tag}-{_sha(front)[:10]}"  # warm-up and features depend on these only
    work.mkdir(parents=True, exist_ok=True)
    log.info("work folder %s", work)
    lora = LoraSettings(r=args.lora_r, alpha=2.0 * args.lora_r)
    text = {"max_length": args.max_length, "long_prompts": "truncate"}

    t0 = time.perf_counter()
    train_path, dev_path, tasks = prepare_data(args, work)
    stage_s["data"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_warmup(MODEL, train_path, work / "warmup", sample_ratio=args.warmup_ratio, epochs=args.warmup_epochs,
               lr=args.warmup_lr, batch_size=args.batch_size, grad_accum=args.grad_accum, lora=lora, seed=args.seed,
               device="cpu", overwrite=True, progress=False, **text)
    stage_s["warmup"] = time.perf_counter() - t0
    log.info("warm-up done (%.0f s)", stage_s["warmup"])

    t0 = time.perf_counter()
    compute_features(MODEL, train_path, work / "warmup", work / "grads", proj_dim=args.proj_dim, batch_size=8,
                     seed=args.seed, device="cpu", progress=False, **text)
    stage_s["grads"] = time.perf_counter() - t0
    log.info("gradient features done (%.0f s)", stage_s["grads"])

    t0 = time.perf_counter()
    features = load_features(work / "grads", dim=args.proj_dim)
    n = features["sft"].shape[0]
    subsets = select_all(args, features, n)
    for seed in args.extra_train_seeds:  # training noise: the first subset trained again with other seeds
        subsets.append({**subsets[0], "label": f"{subsets[0]['label']} (train seed {seed})", "train_seed": seed})
    stage_s["select"] = time.perf_counter() - t0

    # train: one folder per distinct (subset, settings); identical subsets train once
    t0 = time.perf_counter()
    train_settings = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                      "grad_accum": args.grad_accum, "seed": args.seed}
    for s in subsets:
        settings = {**train_settings, "seed": s.get("train_seed", args.seed)}
        key = _sha({"idx": s["indices"].tolist(), "w": s["weights"].tolist(), **settings})[:12]
        s["train_dir"] = work / "train" / key
        t1 = time.perf_counter()
        train_lora(MODEL, train_path, s["train_dir"], indices=s["indices"], weights=s["weights"], weighting="loss",
                   lora=lora, device="cpu", overwrite=True, progress=False, **settings, **text)
        m = read_train_manifest(s["train_dir"])
        s["train_s"] = m.get("train_seconds")
        log.info("train %-22s -> %s (%.0f s this call)", s["label"], key, time.perf_counter() - t1)
    stage_s["train"] = time.perf_counter() - t0

    # evaluate: the base model once (and again at the end, to check that adapters leave it intact)
    t0 = time.perf_counter()
    loaded = load_model_and_tokenizer(MODEL, device="cpu")

    def cached_eval(folder: Path, adapter: Path | None) -> dict:
        from mint.model.modeling import adapter_sha256  # the hash metrics.json records

        f = folder / "metrics.json"
        if f.is_file():
            m = json.loads(f.read_text())
            prov = m.get("provenance", {})
            if (prov.get("adapter_sha256") == (adapter_sha256(adapter, missing_ok=True) if adapter else None)
                    and prov.get("settings", {}).get("max_length") == args.max_length
                    and Path(prov.get("data", "")) == dev_path):
                return m
        return evaluate(MODEL, dev_path, adapter=adapter, output_dir=folder, batch_size=8,
                        model_and_tokenizer=loaded, **text)

    def summary(m: dict) -> dict:
        per_task = {t: v["sft_loss"] for t, v in m.get("per_task", {}).items()}
        return {"sft_loss": m["sft_loss"], "macro_sft_loss": statistics.fmean(per_task.values()),
                "pt_loss": m["pt_loss"], "ifl_loss": m["ifl_loss"], "sft_token_loss": m["sft_token_loss"],
                "per_task": per_task}

    base = summary(cached_eval(work / "eval" / "base", None))
    for s in subsets:
        folder = work / "eval" / s["train_dir"].name
        s["eval"] = summary(cached_eval(folder, s["train_dir"] / "adapter"))
        log.info("eval %-22s sft %.4f macro %.4f", s["label"], s["eval"]["sft_loss"], s["eval"]["macro_sft_loss"])
    base_again = None
    if args.check_base:
        base_again = evaluate(MODEL, dev_path, batch_size=8, model_and_tokenizer=loaded, **text)["sft_loss"]
    stage_s["eval"] = time.perf_counter() - t0
    if base_again is not None and abs(base_again - base["sft_loss"]) > 1e-5:
        log.warning("base model changed after evaluating adapters: %.6f -> %.6f", base["sft_loss"], base_again)

    # results
    rand = [s for s in subsets if s["method"] == "random"]
    rmean = {k: statistics.fmean(s["eval"][k] for s in rand) for k in ("sft_loss", "macro_sft_loss")} if rand else {}
    rsd = ({k: statistics.stdev(s["eval"][k] for s in rand) for k in ("sft_loss", "macro_sft_loss")}
           if len(rand) > 1 else {})
    rows = []
    for s in subsets:
        cov = coverage(tasks, s["indices"].tolist(), s["weights"].tolist())
        better = (sum(s["eval"]["per_task"][t] < statistics.fmean(r["eval"]["per_task"][t] for r in rand)
                      for t in s["eval"]["per_task"]) if rand else None)
        rows.append({"label": s["label"], "method": s["method"], "alpha": s["alpha"], "alpha_reason": s["alpha_reason"],
                     "k": int(s["indices"].size), "zero_weight": s["zero_weight"], "e_pt": s["e_pt"],
                     "e_ifl": s["e_ifl"], **cov, "sft_loss": s["eval"]["sft_loss"],
                     "macro_sft_loss": s["eval"]["macro_sft_loss"], "pt_loss": s["eval"]["pt_loss"],
                     "ifl_loss": s["eval"]["ifl_loss"], "sft_token_loss": s["eval"]["sft_token_loss"],
                     "tasks_better_than_random_mean": better,
                     "train_dir": s["train_dir"].name, "train_s": s["train_s"], "select_s": s["select_s"],
                     "per_task": s["eval"]["per_task"]})
    wall = time.perf_counter() - t_start
    result = {"args": vars(args), "model": MODEL, "n": n, "n_dev": sum(1 for _ in open(dev_path, encoding="utf-8")),
              "n_dev_tasks": len(base["per_task"]), "work_dir": str(work),
              "base": {**base, "sft_loss_after_adapters": base_again}, "random_mean": rmean, "random_sd": rsd,
              "rows": rows, "stage_seconds": {k: round(v, 1) for k, v in stage_s.items()}, "wall_s": round(wall, 1),
              "load_avg": os.getloadavg(), "threads": args.threads}
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"quality_{args.tag}.json", result)
    table = markdown_table(result)
    atomic_write_text(out / f"quality_{args.tag}.md", table)
    print(table)
    return 0


def markdown_table(r: dict) -> str:
    def f(x, nd=3):
        return "" if x is None else f"{x:.{nd}f}"

    base = r["base"]
    lines = [
        "| subset | alpha | k | tasks covered | rare covered | TV to pool mix | E_PT | E_IFL | held-out SFT loss | "
        "macro over tasks | token-weighted SFT loss | tasks better than random mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| base model (no training) | | | | | | | | {f(base['sft_loss'])} | {f(base['macro_sft_loss'])} | "
        f"{f(base['sft_token_loss'])} | |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['label']} | {f(row['alpha'], 4)} | {row['k']} | {row['tasks_covered']}/{row['tasks_present']} | "
            f"{row['rare_covered']}/{row['rare_tasks']} | {f(row['tv_weighted_mix'])} | {f(row['e_pt'], 1)} | "
            f"{f(row['e_ifl'], 1)} | {f(row['sft_loss'])} | {f(row['macro_sft_loss'])} | {f(row['sft_token_loss'])} | "
            f"{'' if row['tasks_better_than_random_mean'] is None else row['tasks_better_than_random_mean']} |")
    rand = [x for x in r["rows"] if x["method"] == "random"]
    if len(rand) > 1:
        cells = [f"{statistics.fmean(x[k] for x in rand):.3f} +- {statistics.stdev(x[k] for x in rand):.3f}"
                 for k in ("sft_loss", "macro_sft_loss", "sft_token_loss")]
        lines.append(f"| random mean +- sd ({len(rand)} seeds) | | | | | | | | {' | '.join(cells)} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
