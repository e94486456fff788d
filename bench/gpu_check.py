"""The GPU check to run when a task is lent a device machine: one command, <= 8 minutes on one H200.

    .venv/bin/python bench/gpu_check.py                 # the checks, a table, then the `gpu` tests
    .venv/bin/python bench/gpu_check.py --skip_tests    # the checks and the table only

It prints what torch sees (device, memory, bf16 support), then one row per check:

1. matmul: a bf16 4096 x 4096 forward + backward (a sanity figure for the device);
2. pipeline: the real SmolLM2 steps on CUDA in bfloat16 (`run_warmup`, `compute_features` with
   the default dense on-device projection, `select_coreset`) on `--n` records, with the peak
   device memory of the feature step against the estimate it logged (`mint.model.memory`);
3. parity: features on the CPU and on CUDA in float32 with `projection sjlt` (the same hashes
   on both devices): the largest relative row difference (tolerance 1e-3: float32 rounding of
   other kernels, summed over ~1e6 coordinates);
4. projection at grad_dim 109M (Llama-3-8B, LoRA r=128) to 8192: ms per example (2 rows) for
   the dense on-device tiles (the matrix regenerated every call: expect seconds, the reason
   for sjlt or trak at this scale) and for sjlt (target for dense: <= 10 ms);
5. batching: per-example gradients batched (batch 8) against a batch-size-1 loop on SmolLM2
   (target >= 2x, which a CPU cannot show).

Then it runs the test suite's `gpu`-marked tests. Record what it printed in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL = REPO.parent / "shared" / "data" / "alpaca_gpt4" / "pool.jsonl"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=str(POOL))
    p.add_argument("--n", type=int, default=64, help="records of the pipeline and batching checks")
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--skip_tests", action="store_true")
    args = p.parse_args(argv)
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        print(json.dumps(info))
        print("no CUDA device: nothing to check here")
        return 1
    props = torch.cuda.get_device_properties(0)
    info.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                bf16=torch.cuda.is_bf16_supported(), devices=torch.cuda.device_count())
    print(json.dumps(info), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "records.jsonl"
        with open(args.data, encoding="utf-8") as f:
            data.write_text("".join(itertools.islice(f, args.n)), encoding="utf-8")
        for check in (_matmul, _pipeline, _parity, _projection, _batching):
            started = time.perf_counter()
            try:
                result = check(args, work, data)
            except Exception as e:  # a failed check is a row of the table, not the end of the run
                result = {"status": "FAILED", "error": f"{type(e).__name__}: {e}"[:300]}
            result["seconds"] = round(time.perf_counter() - started, 1)
            rows.append((check.__name__.strip("_"), result))
            print(f"{check.__name__.strip('_'):<11} {json.dumps(result)}", flush=True)
    print("\n| check | result |\n|---|---|")
    for name, result in rows:
        print(f"| {name} | " + ", ".join(f"{k} {v}" for k, v in result.items()) + " |")
    failed = any(r.get("status") == "FAILED" for _, r in rows)
    if args.skip_tests:
        return int(failed)
    tests = subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                             str(REPO / "tests")], cwd=REPO)
    return int(failed or tests != 0)


def _sync():
    import torch

    torch.cuda.synchronize()


def _matmul(args, work, data) -> dict:
    import torch

    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    (x @ x).float().sum().backward()
    _sync()
    t0 = time.perf_counter()
    for _ in range(20):
        (x @ x).float().sum().backward()
    _sync()
    return {"bf16_fwd_bwd_ms": round((time.perf_counter() - t0) / 20 * 1000, 2)}


def _pipeline(args, work, data) -> dict:
    import numpy as np
    import torch

    import mint
    from mint.model.features import compute_features
    from mint.model.store import read_manifest
    from mint.model.warmup import run_warmup

    warm = run_warmup(args.model, data, work / "warmup", sample_ratio=0.25, epochs=1, batch_size=8, lr=1e-4,
                      max_length=args.max_length, long_prompts="truncate", device="cuda", dtype="bfloat16",
                      progress=False)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = compute_features(args.model, data, warm, work / "grads", proj_dim=8192, batch_size=8,
                           max_length=args.max_length, long_prompts="truncate", device="cuda", dtype="bfloat16",
                           progress=False)
    secs = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    manifest = read_manifest(out)
    feats = mint.load_features(out)
    result = mint.select_coreset(dict(feats), ratios=[0.1], seed=0, progress=False)
    return {"model_dtype": manifest["settings"]["model_dtype"], "tiles": manifest["settings"]["projection"].get("tiles"),
            "features_per_s": round(args.n / secs, 2), "finite": bool(np.isfinite(feats["ifl"]).all()),
            "peak_gib": round(peak / 2**30, 2),
            "estimate_gib": round(manifest["info"]["memory_estimate_bytes"] / 2**30, 2),
            "coreset_k": len(result.subsets[0.1].indices), "alpha": result.alpha}


def _parity(args, work, data) -> dict:
    import numpy as np

    import mint
    from mint.model.features import compute_features
    from mint.model.warmup import run_warmup

    small = work / "parity.jsonl"
    small.write_text("".join(data.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8")
    warm = run_warmup(args.model, small, work / "warm_parity", sample_ratio=0.5, epochs=1, batch_size=4, lr=1e-4,
                      max_length=args.max_length, long_prompts="truncate", device="cpu", progress=False)
    feats = {}
    for device in ("cpu", "cuda"):
        out = compute_features(args.model, small, warm, work / f"parity_{device}", proj_dim=1024, batch_size=4,
                               max_length=args.max_length, long_prompts="truncate", device=device, dtype="float32",
                               projection="sjlt", progress=False)
        feats[device] = mint.load_features(out, normalized=False)
    worst = max(float(np.max(np.linalg.norm(feats["cuda"][k] - feats["cpu"][k], axis=1)
                             / np.linalg.norm(feats["cpu"][k], axis=1))) for k in ("sft", "pt"))
    return {"max_rel_row_diff": f"{worst:.2e}", "tolerance": "1e-3", "status": "ok" if worst < 1e-3 else "FAILED"}


def _projection(args, work, data) -> dict:
    import torch

    from mint.model.projection import make_projector

    grad_dim, rows = 109_051_904, 16
    x = torch.randn(rows, grad_dim, device="cuda")
    out = {"grad_dim": grad_dim, "rows_per_call": rows}
    for kind in ("rademacher", "sjlt"):
        proj = make_projector(grad_dim, 8192, 0, kind=kind, device="cuda", cache_bytes=8 << 30)
        proj.project(x[:2])  # first call: hashes, kernels
        _sync()
        t0 = time.perf_counter()
        proj.project(x)
        _sync()
        out[f"{kind}_ms_per_example"] = round((time.perf_counter() - t0) / (rows / 2) * 1000, 1)
        del proj
        torch.cuda.empty_cache()
    return out


def _batching(args, work, data) -> dict:
    import torch

    from mint.model.data import collate_ids, load_examples, tokenize_examples
    from mint.model.gradients import LoraGradCollector, Preconditioner, shard_features
    from mint.model.modeling import LoraSettings, add_lora, load_model_and_tokenizer
    from mint.model.projection import make_projector

    model, tok = load_model_and_tokenizer(args.model, device="cuda", dtype="bfloat16")
    model = add_lora(model, LoraSettings(r=8, alpha=16))
    model.eval()
    tokenized = tokenize_examples(load_examples(data)[:32], tok, max_length=args.max_length, long_prompts="truncate",
                                  progress=False)
    collector = LoraGradCollector(model)
    projector = make_projector(collector.grad_dim, 1024, 0, device="cuda")
    secs = {}
    for bs in (1, 8, 1, 8):  # each twice: the first pass warms kernels and caches up
        t0 = time.perf_counter()
        shard_features(model, tokenized, collector=collector, preconditioner=Preconditioner("sgd"),
                       projector=projector, batch_size=bs, **collate_ids(tok))
        _sync()
        secs[bs] = time.perf_counter() - t0
    return {"loop_examples_per_s": round(32 / secs[1], 1), "batched_examples_per_s": round(32 / secs[8], 1),
            "speedup": round(secs[1] / secs[8], 2), "target": ">= 2"}


if __name__ == "__main__":
    sys.exit(main())
