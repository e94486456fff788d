"""Benchmark: weighted LoRA training on the Trainer path (`mint.model.train.train_lora`, through
`mint.model.hf_trainer`) against mint's earlier hand-written loop (re-created here from the plain
reference `mint.model.train.accumulate_step`: AdamW, linear schedule, clipping), and peak memory
with and without gradient checkpointing.

Throughput: the first N real records, one epoch, for several batch sizes; both paths run the
same optimizer steps on the same examples; `train_s` is the step loop alone (loading and
tokenisation excluded). Memory: in a fresh subprocess per setting, a few steps on examples of
--memory_length tokens (real responses repeated to that length); the peak resident memory
during training minus the resident memory before it (model loaded, data tokenized).

    .venv/bin/python bench/train.py --n 16 --max_length 256 --batch_sizes 1 4 --threads 1
    .venv/bin/python bench/train.py --memory --memory_length 1024 --memory_steps 2 --threads 1
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="base model (a folder or the alias)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "alpaca_gpt4" / "pool.jsonl"))
    p.add_argument("--n", type=int, default=16, help="records (the first n of --data)")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--grad_accum", type=int, default=1, help="forward passes per optimizer step")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "bench_train"))
    p.add_argument("--memory", action="store_true", help="peak memory with and without gradient checkpointing")
    p.add_argument("--memory_length", type=int, default=1024, help="tokens per example in --memory")
    p.add_argument("--memory_steps", type=int, default=2, help="optimizer steps (batch 1) in --memory")
    p.add_argument("--memory_child", default=None, help=argparse.SUPPRESS)  # one measurement (a subprocess)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.memory_child is not None:
        print(json.dumps(_memory_child(args, work, gradient_checkpointing=args.memory_child == "on")))
        return 0
    if args.memory:
        return _memory(args, work)
    data = work / f"records{args.n}.jsonl"
    with open(args.data, encoding="utf-8") as f:
        data.write_text("".join(next(f) for _ in range(args.n)), encoding="utf-8")
    for bs in args.batch_sizes:
        trainer = _trainer_path(args, data, work / f"trainer_bs{bs}", bs)
        loop = _loop_path(args, data, bs)
        row = {"batch_size": bs, "grad_accum": args.grad_accum, "examples": args.n, "steps": trainer["steps"],
               "trainer_s": trainer["train_s"], "loop_s": loop["train_s"],
               "trainer_ex_per_s": round(args.n / trainer["train_s"], 3), "loop_ex_per_s": round(args.n / loop["train_s"], 3),
               "trainer_over_loop": round(trainer["train_s"] / loop["train_s"], 3),
               "final_loss": {"trainer": trainer["final_loss"], "loop": loop["final_loss"]}}
        print(json.dumps(row))
    print(json.dumps({"threads": args.threads, "max_length": args.max_length, "load_avg": os.getloadavg()}))
    return 0


def _options(args, bs: int, **extra) -> dict:
    from mint.model.modeling import LoraSettings

    return dict(epochs=1, lr=1e-4, batch_size=bs, grad_accum=args.grad_accum, max_length=args.max_length,
                lora=LoraSettings(dropout=0.0), device="cpu", progress=False, **extra)


def _trainer_path(args, data: Path, out: Path, bs: int) -> dict:
    from mint.model.train import read_train_manifest, train_lora

    shutil.rmtree(out, ignore_errors=True)
    train_lora(args.model, data, out, overwrite=True, **_options(args, bs))
    m = read_train_manifest(out)
    return {"train_s": m["train_seconds"], "steps": m["n_steps"], "final_loss": m["final_loss"]}


def _loop_path(args, data: Path, bs: int) -> dict:
    """mint's earlier loop, step for step: the same examples, order, optimizer and schedule."""
    import numpy as np
    import torch
    from transformers import get_linear_schedule_with_warmup

    from mint.model.data import collate_ids, load_examples, tokenize_examples
    from mint.model.modeling import add_lora, load_model_and_tokenizer, lora_named_parameters, seeded_torch
    from mint.model.train import _example_steps, accumulate_step

    opts = _options(args, bs)
    with seeded_torch(0, "cpu"):
        model, tok = load_model_and_tokenizer(args.model, device="cpu")
        model = add_lora(model, opts["lora"])
        model.train()
        tokenized = tokenize_examples(load_examples(data), tok, max_length=args.max_length)
        config = {"epochs": 1.0, "weighting": "none", "batch_size": bs, "grad_accum": args.grad_accum}
        _, steps = _example_steps(len(tokenized), config, np.ones(len(tokenized)), np.random.default_rng(0))
        params = [p for _, p in lora_named_parameters(model)]
        optimizer = torch.optim.AdamW(params, lr=opts["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(0.03 * len(steps)), len(steps))
        ids, loss = collate_ids(tok), None
        start = time.perf_counter()
        for positions in steps:
            optimizer.zero_grad(set_to_none=True)
            positions = sorted(positions, key=lambda q: tokenized[q].sft_length)
            loss, _ = accumulate_step(model, [tokenized[q] for q in positions], np.ones(len(positions)),
                                      batch_size=bs, **ids)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
        return {"train_s": round(time.perf_counter() - start, 2), "final_loss": round(loss, 6)}


def _memory(args, work: Path) -> int:
    rows = []
    for setting in ("off", "on"):
        cmd = [sys.executable, __file__, "--model", args.model, "--data", args.data, "--work_dir", str(work),
               "--threads", str(args.threads), "--memory_length", str(args.memory_length),
               "--memory_steps", str(args.memory_steps), "--memory_child", setting]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    off, on = rows
    print(json.dumps({"memory_length": args.memory_length, "peak_training_mib_off": off["peak_training_mib"],
                      "peak_training_mib_on": on["peak_training_mib"],
                      "reduction": round(1 - on["peak_training_mib"] / off["peak_training_mib"], 3),
                      "time_ratio_on_over_off": round(on["train_s"] / off["train_s"], 3)}))
    return 0


def _status_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) from /proc/self/status."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so the peak that follows is training's alone
    (loading the model may peak higher than it)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _memory_child(args, work: Path, *, gradient_checkpointing: bool) -> dict:
    """A few optimizer steps (batch 1) on long examples; the peak resident memory of training."""
    import numpy as np
    import torch

    from mint.model.data import collate_ids, load_examples, tokenize_examples
    from mint.model.hf_trainer import build_trainer, training_arguments
    from mint.model.modeling import LoraSettings, add_lora, load_model_and_tokenizer, seeded_torch
    from mint.model.train import loss_coefficients

    data = work / f"long{args.memory_length}.jsonl"
    with open(args.data, encoding="utf-8") as f:
        records = [json.loads(next(f)) for _ in range(args.memory_steps)]
    for r in records:  # the response repeated until the example fills memory_length tokens
        r["output"] = " ".join([r["output"]] * (4 * args.memory_length // max(1, len(r["output"].split())) + 1))
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with seeded_torch(0, "cpu"):
        model, tok = load_model_and_tokenizer(args.model, device="cpu")
        model = add_lora(model, LoraSettings(dropout=0.0))
        model.train()
        tokenized = tokenize_examples(load_examples(data), tok, max_length=args.memory_length)
        config = {"batch_size": 1, "grad_accum": 1, "lr": 1e-4, "weight_decay": 0.0, "max_grad_norm": 1.0,
                  "warmup_ratio": 0.0, "seed": 0, "gradient_checkpointing": gradient_checkpointing}
        n = len(tokenized)
        targs = training_arguments(config, output_dir=work / "memory_trainer", n_steps=n, device="cpu")
        trainer = build_trainer(model, tokenized, [[i] for i in range(n)], loss_coefficients(np.ones(n), "none"),
                                ids=collate_ids(tok), args=targs, history=[], checkpoint_seconds=1e9, progress=False)
        before = _status_mib("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    return {"gradient_checkpointing": gradient_checkpointing, "tokens": [t.sft_length for t in tokenized],
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "peak_training_mib": round(peak - before, 1), "train_s": round(seconds, 2), "threads": args.threads,
            "torch": torch.__version__}


if __name__ == "__main__":
    raise SystemExit(main())
