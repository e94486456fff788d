"""Benchmark: examples/s of gradient-feature extraction with SmolLM2-135M-Instruct on CPU.

Compares, on the same N real records (default 64 of the Alpaca pool, max_length 256):

* floor:   two ordinary LoRA training steps per example at batch size 1 (forward + backward of
           the SFT view, then of the PT view, each followed by an AdamW step): the cost any
           method that needs both gradients of every example must pay;
* loop:    `mint.model.gradients.shard_features` with batch_size 1 (per-example gradients from hooks,
           Adam preconditioning, projection to proj_dim);
* batched: the same with batch_size B (default 8).

The loop and batched runs include the projection of all 2N rows (one call, as a 64-example
shard does); its cost is also timed alone. Model loading and tokenisation are excluded
from every figure. The warm-up adapter is trained once (on 1/8 of the records, one epoch)
and reused from --work_dir.

    .venv/bin/python bench/gradients.py --n 64 --max_length 256 --batch_size 8 --threads 1
    .venv/bin/python bench/gradients.py --head_memory --data ../shared/data/ni_mix/pool.jsonl \
        --batch_size 8 --max_length 768 --threads 1      # the response-only output head's saving
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model (a folder or the alias)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "alpaca_gpt4" / "pool.jsonl"))
    p.add_argument("--n", type=int, default=64, help="records (the first n of --data)")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8, help="batch size of the batched path")
    p.add_argument("--proj_dim", type=int, default=8192)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 on a shared 2-core machine: oversubscribed OpenMP threads spin)")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_gradients"))
    p.add_argument("--skip", nargs="*", default=[], choices=["floor", "loop", "batched"])
    p.add_argument("--peak_memory", type=int, nargs="+", metavar="SHARD_SIZE",
                   help="instead: peak RSS of compute_features (one subprocess each) at these shard sizes, for "
                        "each --buffer_mb")
    p.add_argument("--buffer_mb", type=int, nargs="+", default=[0, 1024],
                   help="buffers of the --peak_memory runs (0: one micro-batch, streaming)")
    p.add_argument("--compare_with", metavar="GRADIENTS_PY",
                   help="instead: the batched path of this file's shard_features (another version of "
                        "mint/model/gradients.py, e.g. from `git show REV:src/mint/model/gradients.py`) against "
                        "the current one, alternated --repeats times in one process: wall and CPU seconds, same bytes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--head_memory", action="store_true",
                   help="instead: peak RSS and seconds of one per-example-gradient pass over the first --batch_size "
                        "records, with the output head on the response positions only and on every position (one "
                        "subprocess each, a fresh LoRA r=8 adapter)")
    args = p.parse_args(argv)
    if args.head_memory:
        return head_memory(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.peak_memory:
        return peak_memory(args)
    if args.compare_with:
        return compare_with(args)

    import numpy as np
    import torch

    from mint.model.data import collate, collate_ids, load_examples, tokenize_examples
    from mint.model.features import _adam_state
    from mint.model.gradients import LoraGradCollector, Preconditioner, shard_features
    from mint.model.modeling import (lora_named_parameters, load_lora, load_model_and_tokenizer,
                               response_token_losses)
    from mint.model.projection import make_projector
    from mint.model.warmup import load_warmup_state, run_warmup

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"records{args.n}.jsonl"
    if not data.exists():
        with open(args.data, encoding="utf-8") as f:
            data.write_text("".join(itertools.islice(f, args.n)), encoding="utf-8")
    warm = run_warmup(args.model, data, work / "warmup", sample_ratio=0.125, epochs=1, batch_size=4,
                      lr=1e-4, max_length=args.max_length, long_prompts="truncate", device="cpu")

    model, tok = load_model_and_tokenizer(args.model, device="cpu")
    model = load_lora(model, warm / "adapter", trainable=True)
    model.eval()
    tokenized = tokenize_examples(load_examples(data), tok, max_length=args.max_length, long_prompts="truncate")
    ids = collate_ids(tok)
    n = len(tokenized)
    tokens = {"sft": sum(t.sft_length for t in tokenized),
              "pt": sum(1 + len(t.response_ids) for t in tokenized)}
    keys = [k for k, _ in lora_named_parameters(model)]
    collector = LoraGradCollector(model)
    state = _adam_state(load_warmup_state(warm), warm, keys)
    pre = Preconditioner("adam", **{k: state[k] for k in ("exp_avg", "exp_avg_sq", "betas", "eps")})
    projector = make_projector(collector.grad_dim, args.proj_dim, seed=0, cache_bytes=1 << 30)
    results = {"n": n, "max_length": args.max_length, "proj_dim": args.proj_dim, "grad_dim": collector.grad_dim,
               "threads": args.threads, "tokens": tokens, "batch_size": args.batch_size,
               "loadavg_start": os.getloadavg(), "torch": torch.__version__}

    # projection alone: 2n rows, as one shard of n examples does
    x = torch.randn(2 * n, collector.grad_dim)
    t0 = time.perf_counter()
    projector.project(x)
    results["projection_s"] = time.perf_counter() - t0
    del x

    if "floor" not in args.skip:
        params = [p for _, p in lora_named_parameters(model)]
        opt = torch.optim.AdamW(params, lr=0.0)  # lr 0: the steps cost the same and change nothing
        t0 = time.perf_counter()
        for t in tokenized:
            for view in ("sft", "pt"):
                opt.zero_grad(set_to_none=True)
                response_token_losses(model, collate([t], view, **ids)).sum().backward()
                opt.step()
        results["floor_s"] = time.perf_counter() - t0
        opt.zero_grad(set_to_none=True)

    feats = {}
    for name, bs in (("loop", 1), ("batched", args.batch_size)):
        if name in args.skip:
            continue
        t0 = time.perf_counter()
        feats[name] = shard_features(model, tokenized, collector=collector, preconditioner=pre, projector=projector,
                                     batch_size=bs, **ids)
        results[f"{name}_s"] = time.perf_counter() - t0
    if len(feats) == 2:
        a, b = feats["loop"][f"sft_{args.proj_dim}"], feats["batched"][f"sft_{args.proj_dim}"]
        results["loop_vs_batched_max_rel_diff"] = float(
            np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)))
    results["loadavg_end"] = os.getloadavg()
    for name in ("floor", "loop", "batched"):
        if f"{name}_s" in results:
            results[f"{name}_examples_per_s"] = n / results[f"{name}_s"]
    if "floor_s" in results and "batched_s" in results:
        results["batched_over_floor"] = results["batched_s"] / results["floor_s"]
    if "loop_s" in results and "batched_s" in results:
        results["batched_speedup_over_loop"] = results["loop_s"] / results["batched_s"]
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


def _data_and_warmup(args) -> tuple[Path, Path]:
    from mint.model.warmup import run_warmup

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"records{args.n}.jsonl"
    if not data.exists():
        with open(args.data, encoding="utf-8") as f:
            data.write_text("".join(itertools.islice(f, args.n)), encoding="utf-8")
    warm = run_warmup(args.model, data, work / "warmup", sample_ratio=0.125, epochs=1, batch_size=4,
                      lr=1e-4, max_length=args.max_length, long_prompts="truncate", device="cpu")
    return data, warm


_PEAK = """
import json, resource, sys, time, torch
from mint.model.features import compute_features
model, data, warm, out, shard, buffer_mb, batch, max_length, proj_dim, threads = sys.argv[1:]
torch.set_num_threads(int(threads))
t0 = time.perf_counter()
compute_features(model, data, warm, out, proj_dim=int(proj_dim), batch_size=int(batch), max_length=int(max_length),
                 long_prompts="truncate", shard_size=int(shard), buffer_mb=int(buffer_mb), device="cpu", progress=False)
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


_HEAD = """
import json, resource, sys, time, torch
from mint.model import gradients, modeling
from mint.model.data import collate, collate_ids, load_examples, tokenize_examples
model_name, data, batch, max_length, threads, mode = sys.argv[1:]
torch.set_num_threads(int(threads))
model, tok = modeling.load_model_and_tokenizer(model_name, device="cpu")
torch.manual_seed(0)
model = modeling.add_lora(model, modeling.LoraSettings(r=8, alpha=16.0))
examples = load_examples(data)[: int(batch)]
toks = tokenize_examples(examples, tok, max_length=int(max_length), long_prompts="truncate")
b = collate(toks, "sft", **collate_ids(tok))
real = modeling.response_token_losses
modeling.response_token_losses = lambda m, x: real(m, x, response_only=mode == "response")
collector = gradients.LoraGradCollector(model)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
g = gradients.per_example_grads(model, b, collector)
print(json.dumps({"head": mode, "seconds": round(time.perf_counter() - t0, 2), "rss_before_mib": round(base),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "tokens": int(b["attention_mask"].sum()), "labelled": int((b["labels"][:, 1:] != -100).sum()),
                  "grad_norm": float(g.norm())}))
"""


def head_memory(args) -> int:
    """The output head on the response positions only against every position, in the feature
    step's backward pass (`mint.model.modeling.response_token_losses`)."""
    import subprocess
    import sys

    rows = []
    for mode in ("all", "response"):
        cmd = [sys.executable, "-c", _HEAD, args.model, args.data, str(args.batch_size), str(args.max_length),
               str(args.threads), mode]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"the {mode} run failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.splitlines()[-1]))
    print(json.dumps({"data": args.data, "batch_size": args.batch_size, "max_length": args.max_length,
                      "runs": rows}, indent=2))
    return 0


def compare_with(args) -> int:
    """A/B of shard_features (batched) from another gradients.py against the current one."""
    import importlib.util

    import numpy as np
    import torch

    from mint.model import gradients as current
    from mint.model.data import collate_ids, load_examples, tokenize_examples
    from mint.model.features import _adam_state
    from mint.model.modeling import lora_named_parameters, load_lora, load_model_and_tokenizer
    from mint.model.projection import make_projector
    from mint.model.warmup import load_warmup_state

    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("other_gradients", args.compare_with)
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    data, warm = _data_and_warmup(args)
    model, tok = load_model_and_tokenizer(args.model, device="cpu")
    model = load_lora(model, warm / "adapter", trainable=True)
    model.eval()
    tokenized = tokenize_examples(load_examples(data), tok, max_length=args.max_length, long_prompts="truncate")
    keys = [k for k, _ in lora_named_parameters(model)]
    state = _adam_state(load_warmup_state(warm), warm, keys)
    adam = {k: state[k] for k in ("exp_avg", "exp_avg_sq", "betas", "eps")}
    times = {"other": [], "current": []}
    outputs = {}
    for _ in range(args.repeats):
        for name, mod in (("other", other), ("current", current)):
            collector = mod.LoraGradCollector(model)
            projector = make_projector(collector.grad_dim, args.proj_dim, seed=0, cache_bytes=1 << 30)
            w0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = mod.shard_features(model, tokenized, collector=collector, projector=projector,
                                               preconditioner=mod.Preconditioner("adam", **adam),
                                               batch_size=args.batch_size, **collate_ids(tok))
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    same = all(np.array_equal(outputs["other"][k], outputs["current"][k]) for k in outputs["current"])
    summary = {name: {"wall_s": [round(w, 1) for w, _ in t], "cpu_s": [round(c, 1) for _, c in t],
                      "median_cpu_s": round(sorted(c for _, c in t)[len(t) // 2], 2)} for name, t in times.items()}
    print(json.dumps({"n": len(tokenized), "max_length": args.max_length, "proj_dim": args.proj_dim,
                      "batch_size": args.batch_size, "threads": args.threads, "same_bytes": same,
                      "loadavg": os.getloadavg(), **summary,
                      "current_over_other_cpu": summary["current"]["median_cpu_s"] / summary["other"]["median_cpu_s"]},
                     indent=2))
    return 0


def peak_memory(args) -> int:
    """Peak RSS of the feature step at several shard sizes: with streaming (buffer 0: one
    micro-batch) it does not depend on the shard size; with the whole shard buffered it does,
    up to buffer_mb."""
    import subprocess
    import sys
    import tempfile

    data, warm = _data_and_warmup(args)
    rows = []
    for buffer_mb in args.buffer_mb:
        for shard in args.peak_memory:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-c", _PEAK, args.model, str(data), str(warm), str(Path(tmp) / "f"), str(shard),
                       str(buffer_mb), str(args.batch_size), str(args.max_length), str(args.proj_dim),
                       str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"the feature step at shard_size {shard} failed:\n{out.stderr[-3000:]}")
                rows.append({"shard_size": shard, "buffer_mb": buffer_mb, **json.loads(out.stdout.splitlines()[-1])})
    print(json.dumps({"n": args.n, "max_length": args.max_length, "proj_dim": args.proj_dim,
                      "batch_size": args.batch_size, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
