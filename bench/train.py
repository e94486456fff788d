"""Benchmark: examples/s of weighted LoRA training (`mint.model.train.train_lora`) with
SmolLM2-135M-Instruct on CPU, on the first N real records, for several batch sizes.

Reports the optimizer-step loop alone (`train_seconds` in the manifest: model loading and
tokenisation excluded) and the whole call. Each configuration trains one epoch into a fresh
folder under --work_dir.

    .venv/bin/python bench/train.py --n 16 --max_length 256 --batch_sizes 1 8 --threads 1
    .venv/bin/python bench/train.py --n 16 --max_length 256 --batch_sizes 2 --grad_accum 4 --threads 1
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model (a folder or the alias)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "alpaca_gpt4" / "pool.jsonl"))
    p.add_argument("--n", type=int, default=16, help="records (the first n of --data)")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--grad_accum", type=int, default=1, help="forward passes per optimizer step")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_train"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from mint.model.modeling import LoraSettings
    from mint.model.train import read_train_manifest, train_lora

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"records{args.n}.jsonl"
    with open(args.data, encoding="utf-8") as f:
        data.write_text("".join(next(f) for _ in range(args.n)), encoding="utf-8")
    rows = []
    for bs in args.batch_sizes:
        out = work / f"bs{bs}x{args.grad_accum}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        train_lora(args.model, data, out, epochs=1, lr=1e-4, batch_size=bs, grad_accum=args.grad_accum, max_length=args.max_length,
                   lora=LoraSettings(dropout=0.0), device="cpu", progress=False)
        total = time.perf_counter() - t0
        m = read_train_manifest(out)
        rows.append({"batch_size": bs, "grad_accum": args.grad_accum, "examples": args.n, "steps": m["n_steps"], "train_s": m["train_seconds"],
                     "examples_per_s": round(args.n / m["train_seconds"], 3), "total_s": round(total, 2),
                     "truncated": m["n_truncated"]})
        print(json.dumps(rows[-1]))
    print(json.dumps({"threads": args.threads, "max_length": args.max_length, "load_avg": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
