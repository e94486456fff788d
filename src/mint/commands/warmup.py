"""`mint warmup`: a short LoRA training on a random sample, keeping the adapter and AdamW state."""
from __future__ import annotations

import argparse

from mint.commands.options import (DATA_HELP, LORA_KEYS, MODEL_KEYS, RENDER_KEYS, add_config_options, add_output_options,
                                   apply_threads, config_from_args, trainer_keys)

HELP = "warm a LoRA adapter up on a random sample of the data (adapter + AdamW state for `mint grads`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, [("data.train", "--data"), *MODEL_KEYS, *LORA_KEYS, *RENDER_KEYS, "seed", "threads",
                                ("warmup.sample_ratio", "--sample_ratio"), ("warmup.epochs", "--epochs"),
                                ("warmup.lr", "--lr"), ("warmup.batch_size", "--batch_size"),
                                ("warmup.grad_accum", "--grad_accum"), *trainer_keys("warmup")],
                       required=["data.train"], overrides=DATA_HELP)
    add_output_options(parser, "output folder (adapter/, optimizer.safetensors, manifest.json)")


def summary(kind: str, out) -> str:
    from mint.model.train import read_train_manifest

    m = read_train_manifest(out)
    c = m["config"]
    first, last = m["history"][0]["mean_loss"], m["history"][-1]["mean_loss"]
    return (f"mint {kind}: {c['n_train']} of {c['n_records']} examples, {m['n_steps']} steps, "
            f"loss {first:.4f} -> {last:.4f}, {m['seconds']:.1f} s on {m['device']}\n"
            f"  adapter: {out}/adapter  (manifest: {out}/manifest.json)")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from mint.commands.session import output_folder
    from mint.pipeline.steps import warmup_call

    cfg = config_from_args(args)
    apply_threads(cfg)
    with output_folder(args, args.output_dir):
        out = warmup_call(cfg, Path(cfg.data.train), Path(args.output_dir), overwrite=args.overwrite,
                          progress=not args.no_progress)
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun, rank 0 speaks for the job
        print(summary("warmup", out))
    return 0
