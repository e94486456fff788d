"""One LoRA forward+backward of SmolLM2-135M on 8 x 64 tokens: wall and CPU time per pass.

Run it with and without OMP_WAIT_POLICY=PASSIVE and with 1 or 2 threads to see how spinning
OpenMP threads behave on a busy machine (results in docs/benchmarks.md, "Offline demo"):

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/omp_wait_policy.py --threads 2
    .venv/bin/python bench/omp_wait_policy.py --threads 2
    .venv/bin/python bench/omp_wait_policy.py --model TINY_MODEL_DIR --repeats 1   # smoke (the test suite)
"""
from __future__ import annotations

import argparse
import resource
import time


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model alias or folder")
    args = parser.parse_args()

    import torch

    from mint.model.modeling import LoraSettings, add_lora, load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    model, _ = load_model_and_tokenizer(args.model, device="cpu")
    model = add_lora(model, LoraSettings(r=8, alpha=16))
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (8, 64), generator=torch.Generator().manual_seed(0))
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        model(input_ids=ids, labels=ids).loss.backward()
        print(f"threads {args.threads}: forward+backward 8x64 wall {time.perf_counter() - t0:.2f} s, "
              f"cpu {cpu_seconds() - c0:.2f} s")


if __name__ == "__main__":
    main()
