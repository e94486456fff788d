"""The GPU check to run when a task is lent a device machine: one command, a few minutes.

    .venv/bin/python bench/gpu_check.py            # prints the device, then runs the `gpu` tests

It prints what torch sees (device name, memory, bf16 support), times a bf16 4096 x 4096 matmul
forward+backward on CUDA, and runs the test suite's `gpu`-marked tests (CUDA against CPU:
response losses, the projection), which are skipped on machines without a GPU. Record what it
printed in docs/benchmarks.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        print(json.dumps(info))
        print("no CUDA device: nothing to check here")
        return 1
    props = torch.cuda.get_device_properties(0)
    info.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                bf16=torch.cuda.is_bf16_supported(), devices=torch.cuda.device_count())
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        (x @ x).float().sum().backward()
    torch.cuda.synchronize()
    info["bf16_matmul_fwd_bwd_ms"] = round((time.perf_counter() - t0) / 20 * 1000, 2)
    print(json.dumps(info))
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                            str(REPO / "tests")], cwd=REPO)


if __name__ == "__main__":
    sys.exit(main())
