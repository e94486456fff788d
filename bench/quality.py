"""Evidence benchmark: does a MINT coreset train a better model than the alternatives on real data?

One pipeline per data set with SmolLM2-135M-Instruct (LoRA): warm-up on a seeded 5% sample,
gradient features of the whole pool (SFT and PT views, one pass for every projection size), then,
at every ratio, the subsets of each arm (below), a LoRA adapter trained on each (coreset weights
in the loss unless the arm says otherwise), and every adapter scored on the whole held-out file.

Arms (at every ratio unless said): ``mint/<rule>`` for each automatic-alpha rule; ``craig`` (SFT
features, cluster-size weights) and ``craig/unweighted``; ``pt`` and ``ifl`` (one view only);
``random`` (several seeds, unit weights); ``stratified`` (random within each task in proportion to
its size; it reads the task labels that every other arm is denied, so it is a stronger baseline
than any method may be; ni_mix only); and, at the decision ratio only, the default MINT rule
trained with ``weighting: sampling`` and ``none`` and selected on the other projection size.
``full`` trains on every record (``--full_epochs``, stated in the table). MINT's default rule and
the full data are trained with several seeds.

Statistics (``analyse``): per held-out record, each arm's loss minus the mean over the random
seeds (the arm's own training seeds averaged first); the mean, the macro average over tasks, the
token-weighted loss, exact match of greedy answers on the short-answer records, and the fraction
of the random -> full gap closed, each with a 95% percentile bootstrap interval over held-out
records (stratified by task when there are tasks). These intervals measure the held-out sample;
training-seed noise is shown beside them as the spread of the random seeds.

Every stage resumes: warm-up and features through their manifests, and each trained-and-scored
arm through its small result file under ``bench/results/quality/<tag>/runs`` (kept in git, so a
later sitting, even on a fresh clone, only computes what is missing). ``--budget_minutes`` stops
starting new trainings after that long and analyses what exists; ``--arms`` trains only the
arms named (``random`` at every ratio, ``random@0.05`` at one); the jobs run in order of
importance (two random seeds, the default MINT rule, CRAIG, pt, two more random seeds and the
full data first, at the decision ratio). ``--more_seeds mint/golden@0.05`` trains another arm with
the extra training seeds of the default rule too (it changes the table, so it is a setting).

    .venv/bin/python bench/quality.py --dataset ni_mix                 # the recorded run (hours on a 2-core CPU)
    .venv/bin/python bench/quality.py --dataset alpaca_gpt4
    .venv/bin/python bench/quality.py --smoke --model DIR --pool P --dev D   # seconds, run by the test suite
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MODEL = "smollm2-135m-instruct"
log = logging.getLogger("bench.quality")

# What each data set needs: max_length keeps >= 95% of records whole (checked and reported). With
# SmolLM2's chat template, 512 tokens keep 93.8% of the ni_mix pool whole and 768 keep 97.2%
# (alpaca_gpt4: 98.0% at 512).
DATASETS = {
    "ni_mix": {"pool": DATA / "ni_mix" / "pool.jsonl", "dev": DATA / "ni_mix" / "dev_eval.jsonl", "max_length": 768},
    "alpaca_gpt4": {"pool": DATA / "alpaca_gpt4" / "pool.jsonl", "dev": DATA / "alpaca_gpt4" / "dev_eval.jsonl",
                    "max_length": 512},
}


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _write_if_changed(path: Path, text: str) -> None:
    """Keep the file (and its fingerprint) when the content is already there."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    from mint._io import atomic_write_text

    atomic_write_text(path, text)


# ---------------------------------------------------------------------------------------------
# Data


def prepare_data(args, work: Path) -> dict:
    """The pool without its `task` field (what selection and training read), the task list (a
    sidecar for coverage and the stratified arm), and the held-out file (with `task`)."""
    from mint.records import read_records

    pool = read_records(args.pool)[: args.n] if args.n else read_records(args.pool)
    tasks = [None if r.get("task") is None else str(r["task"]) for r in pool]
    train_path = work / "train.jsonl"
    _write_if_changed(train_path, "".join(json.dumps({k: v for k, v in r.items() if k != "task"}, ensure_ascii=False)
                                          + "\n" for r in pool))
    dev = read_records(args.dev)[: args.n_dev] if args.n_dev else read_records(args.dev)
    dev_path = work / "dev.jsonl"
    _write_if_changed(dev_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in dev))
    has_tasks = all(t is not None for t in tasks)
    log.info("data: %d pool records (%s), %d held-out records", len(pool),
             f"{len(set(tasks))} tasks" if has_tasks else "no task labels", len(dev))
    return {"train": train_path, "dev": dev_path, "tasks": tasks if has_tasks else None,
            "dev_tasks": [r.get("task") for r in dev]}


def tokenized(path: Path, tokenizer, max_length: int) -> list:
    """A file's records as training and scoring tokenize them (a 2,000-record pool in about a second)."""
    from mint.model.data import load_examples, tokenize_examples

    return tokenize_examples(load_examples(path), tokenizer, max_length=max_length, long_prompts="truncate")


def truncation(path: Path, tokenizer, max_length: int) -> dict:
    """How many records fit whole in max_length (the issue asks >= 95%)."""
    tok = tokenized(path, tokenizer, max_length)
    cut = sum(t.truncated for t in tok)
    return {"records": len(tok), "truncated": cut, "whole_fraction": round(1 - cut / len(tok), 4)}


# ---------------------------------------------------------------------------------------------
# Arms


def stratified(tasks: list[str], k: int, seed: int):
    """k records drawn at random within each task, in proportion to its size (largest remainders,
    ties to the larger task then the name): the label-aware baseline."""
    import numpy as np

    count = Counter(tasks)
    names = sorted(count)
    quota = {t: k * count[t] / len(tasks) for t in names}
    seats = {t: int(math.floor(quota[t])) for t in names}
    rest = sorted(names, key=lambda t: (-(quota[t] - seats[t]), -count[t], t))
    for t in rest[: k - sum(seats.values())]:
        seats[t] += 1
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_task.setdefault(t, []).append(i)
    picked = [int(i) for t in names for i in rng.choice(by_task[t], size=seats[t], replace=False)]
    return np.sort(np.asarray(picked, dtype=np.int64))


def select_all(args, features: dict, tasks, n: int) -> list[dict]:
    """Every selected subset: {label, method, ratio, alpha, indices, weights, e_pt, e_ifl}."""
    import numpy as np

    from mint import select_coreset

    out: list[dict] = []

    def add(label, ratio, res_sub, method, alpha=None, unit=False, extra=None):
        idx = np.asarray(res_sub.indices, dtype=np.int64)
        w = np.ones(idx.size) if unit else np.asarray(res_sub.weights, dtype=np.float64)
        out.append({"label": label, "method": method, "ratio": ratio, "alpha": alpha, "indices": idx.tolist(),
                    "weights": w.tolist(), "e_pt": res_sub.e_pt, "e_ifl": res_sub.e_ifl, **(extra or {})})

    def run(method, dim, **kw):
        t0 = time.perf_counter()
        res = select_coreset(features[dim], ratios=args.ratios, method=method, preheat_ratio=args.preheat_ratio,
                             n_jobs=1, progress=False, seed=kw.pop("seed", args.seed), **kw)
        log.info("select %-8s %s dim %d: alpha %s (%.1f s)", method, kw, dim,
                 None if res.alpha is None else round(res.alpha, 4), time.perf_counter() - t0)
        return res

    dim = args.proj_dims[0]
    for rule in args.alpha_methods:
        res = run("mint", dim, alpha_method=rule)
        for r in args.ratios:
            add(f"mint/{rule}", r, res.subsets[r], "mint", res.alpha)
    res = run("craig", dim)
    for r in args.ratios:
        add("craig", r, res.subsets[r], "craig")
        add("craig/unweighted", r, res.subsets[r], "craig", unit=True)
    for m in ("pt", "ifl"):
        res = run(m, dim)
        for r in args.ratios:
            add(m, r, res.subsets[r], m)
    for s in args.random_seeds:
        res = run("random", dim, seed=s)
        for r in args.ratios:
            add("random", r, res.subsets[r], "random", unit=True, extra={"seed": s})
    if tasks is not None:
        for s in args.stratified_seeds:
            for r in args.ratios:
                k = next(len(a["indices"]) for a in out if a["label"] == "random" and a["ratio"] == r)
                idx = stratified(tasks, k, s)
                out.append({"label": "stratified", "method": "stratified", "ratio": r, "alpha": None,
                            "indices": idx.tolist(), "weights": [1.0] * idx.size, "e_pt": None, "e_ifl": None,
                            "seed": s})
    for other in args.proj_dims[1:]:
        res = run("mint", other, alpha_method=args.alpha_methods[0])
        add(f"mint/{args.alpha_methods[0]}/proj{other}", args.decision_ratio, res.subsets[args.decision_ratio],
            "mint", res.alpha)
    return out


def jobs(args, subsets: list[dict], n: int) -> list[dict]:
    """What to train, most informative first: each {name, subset (or None = full), weighting, seed, epochs}."""
    default = f"mint/{args.alpha_methods[0]}"
    by = {(s["label"], s["ratio"], s.get("seed")): s for s in subsets}
    out: list[dict] = []

    def job(label, ratio, subset, *, weighting=None, seed=args.seed, epochs=args.epochs):
        weighting = weighting or ("none" if label.endswith("unweighted") else "loss")  # the arm's own, unless said
        out.append({"label": label, "ratio": ratio, "subset": subset, "weighting": weighting, "seed": seed,
                    "epochs": epochs})

    for ratio in sorted(args.ratios, key=lambda r: (r != args.decision_ratio, r)):
        rs = args.random_seeds
        for s in rs[:2]:
            job("random", ratio, by[("random", ratio, s)], weighting="none")
        job(default, ratio, by[(default, ratio, None)])
        for label in ("craig", "pt"):  # the two one-constraint rivals before the costly full-data run
            job(label, ratio, by[(label, ratio, None)])
        for s in rs[2:4]:
            job("random", ratio, by[("random", ratio, s)], weighting="none")
        if ratio == args.decision_ratio:
            for seed in args.full_seeds[:1]:
                job("full", 1.0, None, weighting="none", seed=seed, epochs=args.full_epochs)
        for label in ("ifl", "craig/unweighted") + tuple(f"mint/{m}" for m in args.alpha_methods[1:]):
            job(label, ratio, by[(label, ratio, None)])
        for s in args.stratified_seeds:
            if ("stratified", ratio, s) in by:
                job("stratified", ratio, by[("stratified", ratio, s)], weighting="none")
        for s in rs[4:]:
            job("random", ratio, by[("random", ratio, s)], weighting="none")
        for seed in args.mint_train_seeds[1:]:
            job(default, ratio, by[(default, ratio, None)], seed=seed)
        for label in sorted({lab for (lab, r, s) in by if r == ratio and s is None and lab != default and any(
                arm_named(a, {"label": lab, "ratio": ratio}) for a in args.more_seeds)}):
            for seed in args.mint_train_seeds[1:]:  # a rival whose lead one seed cannot settle
                job(label, ratio, by[(label, ratio, None)], seed=seed)
        if ratio == args.decision_ratio:
            for w in ("sampling", "none"):
                job(f"{default}/weighting-{w}", ratio, by[(default, ratio, None)], weighting=w)
            for other in args.proj_dims[1:]:
                job(f"{default}/proj{other}", ratio, by[(f"{default}/proj{other}", ratio, None)])
    for seed in args.full_seeds[1:]:
        job("full", 1.0, None, weighting="none", seed=seed, epochs=args.full_epochs)
    for j in out:  # arms that picked the same subset train once (train_key) but keep their own rows (key)
        sub = j["subset"]
        j["train_key"] = _sha({"indices": None if sub is None else sub["indices"], "weights": None if sub is None
                               else sub["weights"], "weighting": j["weighting"], "seed": j["seed"],
                               "epochs": j["epochs"], "train": train_settings(args)})[:16]
        j["key"] = _sha({"label": j["label"], "ratio": j["ratio"], "train_key": j["train_key"]})[:16]
    return out


def arm_named(name: str, job: dict) -> bool:
    """``--arms`` names an arm by its label (every ratio) or by ``label@ratio`` (that ratio only)."""
    label, _, ratio = name.rpartition("@")
    if not label:
        return job["label"] == name
    try:
        return job["label"] == label and abs(job["ratio"] - float(ratio)) < 1e-9
    except ValueError:
        return False


def check_more_seeds(names, todo: list[dict]) -> tuple[list[str], list[str]]:
    """The ``--more_seeds`` names that match no selected arm, and the labels that could: random and
    stratified arms differ by their draws (``--random_seeds``), the full data by ``--full_seeds``."""
    seeded = {(j["label"], j["ratio"]) for j in todo if j["subset"] is not None and j["subset"].get("seed") is None
              and j["subset"]["label"] == j["label"]}  # not the weighting arms, which reuse the default's subset
    bad = sorted(a for a in names if not any(arm_named(a, {"label": lab, "ratio": r}) for lab, r in seeded))
    return bad, sorted({lab for lab, _ in seeded})


def front_settings(args) -> dict:
    """What the warm-up, the features and so the selections depend on. The pool by its content,
    not its path, so that the stored selections serve any checkout."""
    from mint._io import sha256_file

    front = {k: str(getattr(args, k)) for k in ("model", "n", "seed", "max_length", "proj_dims", "warmup_ratio",
                                                "warmup_epochs", "warmup_lr", "lora_r", "grads_batch_size")}
    return {**front, "pool_sha256": sha256_file(args.pool)}


def train_settings(args) -> dict:
    return {"lr": args.lr, "batch_size": args.batch_size, "grad_accum": args.grad_accum, "lora_r": args.lora_r,
            "max_length": args.max_length}


# ---------------------------------------------------------------------------------------------
# Statistics


def analyse(runs: list[dict], base: dict, dev_tasks: list, *, n_boot: int, seed: int, rule: str | None = None) -> dict:
    """Per (label, ratio): the paired differences against the random mean, with bootstrap intervals;
    with `rule` (the default MINT arm's label), every other `mint/` arm also against that arm at its
    ratio (`vs_rule`), the direct test of a default."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["label"], r["ratio"]), []).append(r)
    m = len(base["sft"])
    tokens = np.asarray(base["tokens"], dtype=np.float64)
    tasks = [str(t) for t in dev_tasks] if all(t is not None for t in dev_tasks) else None
    rng = np.random.default_rng(seed)
    if tasks is not None:  # resample records within each task, so every resample has every task
        by_task: dict[str, np.ndarray] = {}
        for i, t in enumerate(tasks):
            by_task.setdefault(t, []).append(i)  # type: ignore[arg-type]
        names = sorted(by_task)
        task_of = np.asarray([names.index(t) for t in tasks])
        boots = np.stack([np.concatenate([rng.choice(by_task[t], size=len(by_task[t])) for t in names])
                          for _ in range(n_boot)])
    else:
        names, task_of = [], None
        boots = rng.integers(0, m, size=(n_boot, m))

    def mean_loss(rs):
        return np.mean([r["sft"] for r in rs], axis=0)

    def em(rs):
        arr = np.asarray([[np.nan if v is None else v for v in r["exact_match"]] for r in rs], dtype=np.float64)
        return np.mean(arr, axis=0)

    def stats(vec, sample):  # the four summaries of a per-record vector on a resample (rows of indices)
        v = vec[sample]
        out = {"mean": v.mean(axis=-1), "token": (v * tokens[sample]).sum(axis=-1) / tokens[sample].sum(axis=-1)}
        if task_of is not None:
            t = task_of[sample]
            out["macro"] = np.stack([np.where(t == j, v, 0).sum(axis=-1) / (t == j).sum(axis=-1)
                                     for j in range(len(names))]).mean(axis=0)
        return out

    def interval(point, draws):
        lo, hi = np.percentile(draws, [2.5, 97.5])
        return {"value": float(point), "lo": float(lo), "hi": float(hi)}

    # held-out records in three bins of answer length (tokens learned), so a token-weighted loss
    # that disagrees with the plain mean can be traced to the long answers it weighs most
    length_bin, edges = length_thirds(tokens)
    masks = [length_bin == b for b in range(len(edges) + 1) if (length_bin == b).any()]
    bins = [{"tokens_min": int(tokens[k].min()), "tokens_max": int(tokens[k].max()), "records": int(k.sum())}
            for k in masks]

    def by_length(d):
        return [interval(d[k].mean(), np.where(k[boots], d[boots], 0).sum(axis=1) / np.maximum(k[boots].sum(axis=1), 1))
                for k in masks]

    full = groups.get(("full", 1.0))
    full_loss = mean_loss(full) if full else None
    table = {}
    ident = np.arange(m)
    for ratio in sorted({k[1] for k in groups if k[0] == "random"}):
        rand = groups[("random", ratio)]
        rmean = mean_loss(rand)
        rem = em(rand)
        seed_means = [float(np.mean(r["sft"])) for r in rand]
        for (label, r2), rs in sorted(groups.items()):
            if r2 != ratio:
                continue
            a = mean_loss(rs)
            d = a - rmean
            row = {"label": label, "ratio": ratio, "runs": len(rs), "k": rs[0].get("k"),
                   "train_seeds": sorted(r["seed"] for r in rs), "sft_loss": float(a.mean()),
                   "seed_sd": float(statistics.stdev([float(np.mean(r["sft"])) for r in rs])) if len(rs) > 1 else None}
            point, draws = stats(d, ident), stats(d, boots)
            for key in point:
                row[f"delta_{key}"] = interval(point[key], draws[key])
            row["delta_by_length"] = by_length(d)
            # where the arm falls among single random draws: the draw-to-draw spread the paired
            # intervals (over held-out records) do not show
            row["beats_random_draws"] = sum(m > row["sft_loss"] for m in seed_means)
            row["random_draws"] = len(seed_means)
            answers = [r["subset_answer_tokens"] for r in rs if r.get("subset_answer_tokens")]
            if answers:  # of the training subset, averaged over the runs' subsets
                row["subset_answer_tokens"] = {k: float(np.mean([x[k] for x in answers])) for k in answers[0]}
            e = em(rs) - rem
            ok = ~np.isnan(e)
            if ok.any():
                row["exact_match"] = float(np.nanmean(em(rs)))
                eb = np.where(ok[boots], e[boots], 0).sum(axis=1) / np.maximum(ok[boots].sum(axis=1), 1)
                row["delta_exact_match"] = interval(e[ok].mean(), eb)
            if full_loss is not None:
                gap = (rmean - full_loss)
                num, den = (rmean - a)[boots].mean(axis=1), gap[boots].mean(axis=1)
                row["gap_closed"] = interval((rmean - a).mean() / gap.mean(), num / den)
            ref = groups.get((rule, ratio))
            if ref and label != rule and label.startswith("mint/"):
                dr = a - mean_loss(ref)
                pr, br = stats(dr, ident), stats(dr, boots)
                row["vs_rule"] = {"label": rule, "runs": len(ref),
                                  **{f"delta_{key}": interval(pr[key], br[key]) for key in ("mean", "token")}}
            for key in ("alpha", "e_pt", "e_ifl", "coverage"):
                row[key] = rs[0].get(key)
            table[f"{label}@{ratio}"] = row
        table[f"random@{ratio}"]["random_seed_means"] = seed_means
    if full:
        table["full@1.0"] = {"label": "full", "ratio": 1.0, "runs": len(full), "sft_loss": float(full_loss.mean()),
                             "train_seeds": sorted(r["seed"] for r in full), "epochs": full[0]["epochs"],
                             "seed_sd": float(statistics.stdev([float(np.mean(r["sft"])) for r in full]))
                             if len(full) > 1 else None}
    return {"rows": table, "base_sft_loss": float(np.mean(base["sft"])), "n_dev": m, "n_boot": n_boot,
            "tasks": len(names) if names else None, "length_bins": bins}


def length_thirds(tokens):
    """Each record's third by answer tokens (0, 1, 2) and the cuts: the 1/3 and 2/3 quantiles, a
    record on a cut going to the upper third; fewer thirds when the quantiles coincide."""
    import numpy as np

    edges = np.unique(np.quantile(tokens, [1 / 3, 2 / 3]))
    return np.searchsorted(edges, tokens, side="right"), edges


def subset_answer_tokens(pool_tokens: list[int], subset: dict | None, weighting: str) -> dict:
    """Mean answer length of a training subset: of its records, and as trained (weighted by the
    subset's weights unless the weighting is none; the full data is every record once)."""
    import numpy as np

    t = np.asarray(pool_tokens, dtype=np.float64)
    if subset is None:
        return {"mean": float(t.mean()), "as_trained": float(t.mean())}
    i = np.asarray(subset["indices"])
    w = np.ones(len(i)) if weighting == "none" else np.asarray(subset["weights"], dtype=np.float64)
    return {"mean": float(t[i].mean()), "as_trained": float((t[i] * w).sum() / w.sum())}


def coverage(tasks, indices) -> dict | None:
    if tasks is None:
        return None
    pool, sub = Counter(tasks), Counter(tasks[i] for i in indices)
    rare = set(sorted(pool, key=lambda t: (pool[t], t))[: len(pool) // 2])
    return {"tasks": len(sub), "of": len(pool), "rare": len(set(sub) & rare), "rare_of": len(rare)}


def markdown(result: dict) -> str:
    def ci(x, nd=3, pct=False):
        if not x:
            return ""
        f = (lambda v: f"{100 * v:.{max(nd - 2, 0)}f}%") if pct else (lambda v: f"{v:+.{nd}f}")
        return f"{f(x['value'])} [{f(x['lo'])}, {f(x['hi'])}]"

    a = result["analysis"]
    lines = [f"base model (no training): held-out SFT loss {a['base_sft_loss']:.3f} on {a['n_dev']} records; "
             f"intervals: 95% bootstrap over held-out records ({a['n_boot']} resamples"
             + (", within each task)" if a["tasks"] else ")") + "; negative = better than random",
             "",
             "| ratio | arm | runs | k | held-out SFT loss | random draws beaten | vs random: mean | macro over tasks | "
             "token-weighted | exact match (vs random) | random->full gap closed | tasks (rare) covered |",
             "|---:|---|---:|---:|---:|---:|---|---|---|---|---|---|"]
    for row in sorted(a["rows"].values(), key=lambda r: (r["ratio"], r["label"] != "random", r["sft_loss"])):
        if row["label"] == "full":
            lines.append(f"| 1.0 | full data ({row['epochs']:g} epoch) | {row['runs']} | all | {row['sft_loss']:.3f}"
                         + (f" ± {row['seed_sd']:.3f}" if row.get("seed_sd") else "") + " | | | | | | | |")
            continue
        cov = row.get("coverage")
        sd = f" ± {row['seed_sd']:.3f}" if row.get("seed_sd") else ""
        emx = (f"{row['exact_match']:.3f} ({ci(row.get('delta_exact_match'))})" if "exact_match" in row else "")
        lines.append(f"| {row['ratio']:g} | {row['label']} | {row['runs']} | {row.get('k') or ''} | "
                     f"{row['sft_loss']:.3f}{sd} | "
                     + ("" if row["label"] == "random" else f"{row['beats_random_draws']} of {row['random_draws']}")
                     + f" | {ci(row.get('delta_mean'))} | {ci(row.get('delta_macro'))} | "
                     f"{ci(row.get('delta_token'))} | {emx} | {ci(row.get('gap_closed'), pct=True)} | "
                     + (f"{cov['tasks']}/{cov['of']} ({cov['rare']}/{cov['rare_of']})" if cov else "") + " |")
    bins = a.get("length_bins") or []
    if bins:
        lines += ["", "By held-out answer length (learned tokens, template included): the paired difference against "
                  "random in each third of the held-out records, and the mean answer length of the training subset "
                  "(of its records / as trained, weights applied).", "",
                  "| ratio | arm | subset answer tokens | "
                  + " | ".join(f"{b['tokens_min']}-{b['tokens_max']} tokens ({b['records']} records)" for b in bins)
                  + " |", "|---:|---|---|" + "---|" * len(bins)]
        for row in sorted(a["rows"].values(), key=lambda r: (r["ratio"], r["label"] != "random", r["sft_loss"])):
            if row["label"] == "full" or "delta_by_length" not in row:
                continue
            t = row.get("subset_answer_tokens")
            lines.append(f"| {row['ratio']:g} | {row['label']} | "
                         + (f"{t['mean']:.1f} / {t['as_trained']:.1f}" if t else "") + " | "
                         + " | ".join(ci(x) for x in row["delta_by_length"]) + " |")
    versus = [row for row in sorted(a["rows"].values(), key=lambda r: (r["ratio"], r["label"]))
              if row.get("vs_rule")]
    if versus:
        lines += ["", f"Against the default rule ({versus[0]['vs_rule']['label']}, its training seeds averaged per "
                  "record): the paired difference, arm minus rule; negative = the arm is better.", "",
                  "| ratio | arm | runs | rule runs | vs rule: mean | token-weighted |", "|---:|---|---:|---:|---|---|"]
        for row in versus:
            v = row["vs_rule"]
            lines.append(f"| {row['ratio']:g} | {row['label']} | {row['runs']} | {v['runs']} | "
                         f"{ci(v['delta_mean'])} | {ci(v['delta_token'])} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["analysis"]["rows"].values() if r["label"] != "full"]
    labels = sorted({r["label"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ratios = sorted({r["ratio"] for r in rows})
    step = 0.5 * min((b - a for a, b in zip(ratios, ratios[1:])), default=0.05) / max(len(labels), 1)
    for j, label in enumerate(labels):
        rs = sorted((r for r in rows if r["label"] == label), key=lambda r: r["ratio"])
        x = [r["ratio"] + step * (j - (len(labels) - 1) / 2) for r in rs]  # arms side by side at each ratio
        # left: each arm's spread over its runs (random: over its draws; one run: no bar)
        ax1.errorbar(x, [r["sft_loss"] for r in rs], yerr=[r.get("seed_sd") or 0.0 for r in rs], marker="o",
                     capsize=3, label=label + (" (± sd over runs)" if any(r.get("seed_sd") for r in rs) else ""))
        d = [r["delta_mean"] for r in rs]
        ax2.errorbar(x, [v["value"] for v in d], yerr=[[v["value"] - v["lo"] for v in d], [v["hi"] - v["value"]
                     for v in d]], marker="o", capsize=3, label=label)
    full = result["analysis"]["rows"].get("full@1.0")
    if full:
        ax1.axhline(full["sft_loss"], color="k", ls="--", lw=1, label="full data")
        if full.get("seed_sd"):
            ax1.axhspan(full["sft_loss"] - full["seed_sd"], full["sft_loss"] + full["seed_sd"], color="k", alpha=0.1)
    ax2.axhline(0, color="grey", lw=1)
    banded = False
    for r in rows:  # how far one random draw strays from the random mean: the noise a single arm carries too
        spread = r.get("random_seed_means") or []
        if len(spread) > 1:
            sd, half = statistics.stdev(spread), 0.5 * step * (len(labels) + 1)
            ax2.fill_between([r["ratio"] - half, r["ratio"] + half], -sd, sd, color="grey", alpha=0.15,
                             label=None if banded else "one random draw: ± sd")
            banded = True
    if banded:
        ax2.legend(fontsize=7, loc="upper left")
    for ax in (ax1, ax2):
        ax.set_xticks(ratios)
        ax.set_xlim(ratios[0] - 0.5 * step * (len(labels) + 1), ratios[-1] + 0.5 * step * (len(labels) + 1))
    ax1.set(xlabel="ratio", ylabel="held-out SFT loss", title=result["dataset"])
    ax2.set(xlabel="ratio", ylabel="loss minus random mean (95% CI)", title="paired difference against random")
    ax1.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="ni_mix")
    p.add_argument("--pool", help="default: the data set's pool.jsonl")
    p.add_argument("--dev", help="default: the data set's dev_eval.jsonl")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--n", type=int, default=0, help="only the first N pool records (0 = all)")
    p.add_argument("--n_dev", type=int, default=0, help="only the first N held-out records (0 = all)")
    p.add_argument("--max_length", type=int, help="default: the data set's (>= 95%% of records whole)")
    p.add_argument("--proj_dims", type=int, nargs="+", default=[1024, 8192],
                   help="the first for every arm; the others for one MINT arm at the decision ratio")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--decision_ratio", type=float, default=0.1)
    p.add_argument("--alpha_methods", nargs="+", default=["plateau", "plateau_scaled", "golden"],
                   help="the first is the default rule (the library's: plateau), trained with several seeds and "
                        "weightings and compared with the other MINT arms")
    p.add_argument("--random_seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--stratified_seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--mint_train_seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--full_seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--more_seeds", nargs="*", default=[], metavar="LABEL",
                   help="other selected arms (LABEL or LABEL@RATIO, e.g. mint/golden@0.05) also trained with "
                        "--mint_train_seeds, like the default MINT rule")
    p.add_argument("--full_epochs", type=float, default=1.0)
    p.add_argument("--preheat_ratio", type=float, default=0.3)
    p.add_argument("--warmup_ratio", type=float, default=0.05)
    p.add_argument("--warmup_epochs", type=float, default=2.0)
    p.add_argument("--warmup_lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--grad_accum", type=int, default=2)
    p.add_argument("--lora_r", type=int, default=8)
    p.add_argument("--grads_batch_size", type=int, default=4,
                   help="examples per backward pass of the feature step (8 at 768 tokens peaked above 15 GB)")
    p.add_argument("--generate", action=argparse.BooleanOptionalAction, default=True,
                   help="greedy answers for exact match on short-answer records")
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--n_boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the table says which numbers came from where)")
    p.add_argument("--budget_minutes", type=float, default=0, help="start no training after this long (0 = none)")
    p.add_argument("--arms", nargs="+", metavar="LABEL",
                   help="train only these arms this sitting, by label (every ratio) or label@ratio, e.g. "
                        "mint/golden random@0.05 (the table still uses every stored run; arms that picked a "
                        "trained subset are scored too)")
    p.add_argument("--only_analyse", action="store_true", help="no computing: the table from the stored runs")
    p.add_argument("--smoke", action="store_true", help="a few records, few arms, one epoch: seconds on a tiny model")
    p.add_argument("--tag", help="names the work and result folders (default: the data set)")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_quality"))
    p.add_argument("--results_dir", default=str(REPO / "bench" / "results" / "quality"))
    args = p.parse_args(argv)
    preset = DATASETS[args.dataset]
    args.pool = Path(args.pool or preset["pool"])
    args.dev = Path(args.dev or preset["dev"])
    args.max_length = args.max_length or preset["max_length"]
    if args.smoke:
        args.n = args.n or 40
        args.n_dev = args.n_dev or 12
        args.proj_dims, args.ratios, args.decision_ratio = [32, 16], [0.1, 0.2], 0.2
        args.alpha_methods, args.random_seeds, args.stratified_seeds = ["plateau", "golden"], [0, 1], [0]
        args.mint_train_seeds, args.full_seeds, args.full_epochs = [0, 1], [0], 0.5
        args.epochs, args.warmup_epochs, args.n_boot, args.max_new_tokens = 1.0, 1.0, 50, 4
        args.max_length = min(args.max_length, 96)
        args.warmup_ratio = 0.25
    args.tag = args.tag or (args.dataset + ("-smoke" if args.smoke else ""))
    if args.decision_ratio not in args.ratios:
        p.error(f"--decision_ratio {args.decision_ratio} must be one of --ratios {args.ratios}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numpy as np
    import torch

    from mint._io import atomic_write_json, atomic_write_text
    from mint.model.evaluate import evaluate
    from mint.model.modeling import LoraSettings, adapter_sha256, load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    front = front_settings(args)
    work = Path(args.work_dir) / f"{args.tag}-{_sha(front)[:10]}"  # warm-up and features depend on these only
    results = Path(args.results_dir) / args.tag
    runs_dir = results / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log.info("work folder %s, results %s", work, results)
    lora = LoraSettings(r=args.lora_r, alpha=2.0 * args.lora_r)
    text = {"max_length": args.max_length, "long_prompts": "truncate"}
    data = prepare_data(args, work)
    stage_s: dict[str, float] = {}

    sel_file = results / "selections.json"
    selections = json.loads(sel_file.read_text()) if sel_file.is_file() else None
    if selections is not None and selections.get("front") != front:
        log.warning("%s was made with other settings: selecting again", sel_file)
        selections = None
    if selections is None and not args.only_analyse:
        from mint.model.features import compute_features
        from mint.model.store import load_features
        from mint.model.warmup import run_warmup

        t0 = time.perf_counter()
        run_warmup(args.model, data["train"], work / "warmup", sample_ratio=args.warmup_ratio,
                   epochs=args.warmup_epochs, lr=args.warmup_lr, batch_size=args.batch_size,
                   grad_accum=args.grad_accum, lora=lora, seed=args.seed, device=args.device, overwrite=True,
                   progress=True, **text)
        stage_s["warmup"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        compute_features(args.model, data["train"], work / "warmup", work / "grads", proj_dim=list(args.proj_dims),
                         batch_size=args.grads_batch_size, seed=args.seed, device=args.device, progress=True, **text)
        stage_s["grads"] = time.perf_counter() - t0
        feats = {d: load_features(work / "grads", dim=d) for d in args.proj_dims}
        n = feats[args.proj_dims[0]]["sft"].shape[0]
        t0 = time.perf_counter()
        subsets = select_all(args, feats, data["tasks"], n)
        stage_s["select"] = time.perf_counter() - t0
        for s in subsets:
            s["coverage"] = coverage(data["tasks"], s["indices"])
        selections = {"front": front, "n": n, "subsets": subsets, "stage_seconds": stage_s}
        atomic_write_json(sel_file, selections)
    if selections is None:
        raise SystemExit(f"no selections at {sel_file}: run without --only_analyse first")

    todo = jobs(args, selections["subsets"], selections["n"])
    unknown = sorted(a for a in args.arms or () if not any(arm_named(a, j) for j in todo))
    unseedable, seedable = check_more_seeds(args.more_seeds, todo)
    if unseedable:
        raise SystemExit(f"--more_seeds: no selected arm is named {', '.join(unseedable)}; they are "
                         f"{', '.join(seedable)} (LABEL or LABEL@RATIO)")
    if unknown:  # a misspelt label would otherwise train nothing, silently
        raise SystemExit(f"--arms: no arm is named {', '.join(unknown)}; the arms are "
                         f"{', '.join(sorted({j['label'] for j in todo}))} (LABEL or LABEL@RATIO, e.g. random@0.05)")
    loaded = None
    dev_sha = _sha(data["dev"].read_text(encoding="utf-8"))

    def evaluate_into(folder: Path, adapter) -> dict:
        m = evaluate(args.model, data["dev"], adapter=adapter, output_dir=folder, batch_size=8,
                     generate=args.generate, max_new_tokens=args.max_new_tokens, model_and_tokenizer=loaded, **text)
        rows = [json.loads(line) for line in (folder / "per_example.jsonl").read_text().splitlines()]
        return {"sft": [round(r["sft_loss"], 6) for r in rows], "tokens": [r["response_tokens"] for r in rows],
                "exact_match": [r.get("exact_match") for r in rows], "sft_loss": m["sft_loss"],
                "adapter_sha256": adapter_sha256(adapter) if adapter else None}

    base_file = runs_dir / "base.json"
    base = json.loads(base_file.read_text()) if base_file.is_file() else None
    if (base is None or base.get("dev_sha") != dev_sha) and not args.only_analyse:
        loaded = load_model_and_tokenizer(args.model, device=args.device)
        trunc = {"train": truncation(data["train"], loaded[1], args.max_length),
                 "dev": truncation(data["dev"], loaded[1], args.max_length)}
        log.info("max_length %d: %s", args.max_length, trunc)
        base = {"dev_sha": dev_sha, "truncation": trunc, **evaluate_into(work / "eval" / "base", None)}
        atomic_write_json(base_file, base)

    from mint.model.train import read_train_manifest, train_lora

    def train_and_score(j, sub) -> dict:
        from mint.errors import MintError

        folder = work / "train" / j["train_key"]
        try:
            train_lora(args.model, data["train"], folder, indices=None if sub is None else sub["indices"],
                       weights=None if sub is None else sub["weights"], weighting=j["weighting"],
                       epochs=j["epochs"], lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum,
                       lora=lora, seed=j["seed"], device=args.device, progress=True,
                       **text)  # a finished or interrupted training resumes
        except MintError as e:
            if "overwrite" not in str(e):
                raise
            # a stale folder: train_lora's fix is its overwrite option, which the benchmark does not offer
            raise MintError(f"{e}\n(it is the benchmark's own work folder: delete {folder} to train "
                            f"{j['label']}@{j['ratio']:g} seed {j['seed']} again)") from e
        return {**evaluate_into(work / "eval" / j["train_key"], folder / "adapter"),
                "train_seconds": read_train_manifest(folder).get("train_seconds")}

    stored = {}
    for j in todo:
        f = runs_dir / f"{j['key']}.json"
        if f.is_file():
            r = json.loads(f.read_text())
            if r.get("dev_sha") == dev_sha:
                stored[j["key"]] = r
    spent = False
    for j in todo:
        if j["key"] in stored or args.only_analyse:
            continue
        sub = j["subset"]
        twin = next((r for r in stored.values() if r.get("train_key") == j["train_key"]), None)
        if twin is None and args.arms and not any(arm_named(a, j) for a in args.arms):
            continue
        if twin is None and args.budget_minutes and time.perf_counter() - t_start > 60 * args.budget_minutes:
            if not spent:
                log.info("budget of %g minutes spent: no more trainings (arms that picked an already trained "
                         "subset are still scored)", args.budget_minutes)
            spent = True
            continue
        t0 = time.perf_counter()
        if twin is not None:  # the same subset and settings as an arm already scored: the same adapter
            ev = {k: twin[k] for k in ("sft", "tokens", "exact_match", "sft_loss", "adapter_sha256",
                                       "train_seconds")}
            log.info("%s@%g picked the same subset as %s@%g: its scores are reused", j["label"], j["ratio"],
                     twin["label"], twin["ratio"])
        else:
            if loaded is None:
                loaded = load_model_and_tokenizer(args.model, device=args.device)
            ev = train_and_score(j, sub)
        record = {"label": j["label"], "ratio": j["ratio"], "seed": j["seed"], "weighting": j["weighting"],
                  "epochs": j["epochs"], "k": None if sub is None else len(sub["indices"]),
                  "select_seed": None if sub is None else sub.get("seed"), "dev_sha": dev_sha,
                  "train_key": j["train_key"], "wall_seconds": round(time.perf_counter() - t0, 1),
                  "train_settings": train_settings(args), **ev}
        for key in ("alpha", "e_pt", "e_ifl", "coverage"):
            record[key] = None if sub is None else sub.get(key)
        atomic_write_json(runs_dir / f"{j['key']}.json", record)
        stored[j["key"]] = record
        log.info("%-34s ratio %-5g seed %d: held-out SFT %.4f (%.0f s)", j["label"], j["ratio"], j["seed"],
                 ev["sft_loss"], time.perf_counter() - t0)

    done = [j for j in todo if j["key"] in stored]
    pool_tokens = []  # the answer length each arm trained on: not stored, derived from the subsets
    if done:
        from mint.model.modeling import load_tokenizer

        tokenizer = loaded[1] if loaded else load_tokenizer(args.model)
        pool_tokens = [len(t.response_ids) for t in tokenized(data["train"], tokenizer, args.max_length)]
    runs = [{**stored[j["key"]], "subset_answer_tokens": subset_answer_tokens(pool_tokens, j["subset"], j["weighting"])}
            for j in done]
    def name(j) -> str:  # random and stratified arms differ by their selection seed, the others by the training seed
        drawn = (j["subset"] or {}).get("seed")
        return f"{j['label']}@{j['ratio']:g} " + (f"draw {drawn}" if drawn is not None else f"seed {j['seed']}")

    missing = [name(j) for j in todo if j["key"] not in stored]
    if not any(r["label"] == "random" for r in runs) or base is None:
        log.info("not enough runs for a table yet (%d of %d)", len(runs), len(todo))
        return 0
    result = {"dataset": args.dataset, "model": args.model, "device": args.device, "settings": settings_of(args),
              "written_by": " ".join(["bench/quality.py", *(sys.argv[1:] if argv is None else argv)]),
              "n": selections["n"], "truncation": base.get("truncation"), "runs_done": len(runs),
              "runs_total": len(todo), "missing": missing,
              "analysis": analyse(runs, base, data["dev_tasks"], n_boot=args.n_boot, seed=args.seed,
                                  rule=f"mint/{args.alpha_methods[0]}"),
              "selection_stage_seconds": selections.get("stage_seconds"), "versions": _versions()}
    atomic_write_json(results / "result.json", result)
    table = markdown(result)
    atomic_write_text(results / "table.md", table)
    plot(result, results / "loss_vs_ratio.png")
    print(table)
    print(f"{len(runs)} of {len(todo)} runs done" + (f"; missing: {', '.join(missing)}" if missing else ""))
    return 0


# How one sitting runs, not what the table measures: left out of result.json's settings
SITTING_ONLY = ("arms", "budget_minutes", "only_analyse", "threads", "work_dir", "results_dir")


def settings_of(args) -> dict:
    """The benchmark's settings for result.json: every option but the sitting's own (`SITTING_ONLY`),
    so a table regenerated with --only_analyse or a sitting limited by --arms records the same
    settings; the invocation that wrote the file goes to `written_by` beside it."""
    return {k: str(v) for k, v in sorted(vars(args).items()) if k not in SITTING_ONLY}


def _versions() -> dict:
    from mint._io import versions

    return versions()


if __name__ == "__main__":
    from mint.errors import MintError

    try:
        raise SystemExit(main())
    except MintError as e:  # bad input or a stale work folder: the message and its fix, not a traceback
        raise SystemExit(f"quality.py: error: {e}") from None
