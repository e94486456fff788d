"""`mint train`: weighted LoRA training on a coreset, a random subset, or the full data."""
from __future__ import annotations

import argparse

from mint.commands.options import (DATA_HELP, LORA_KEYS, MODEL_KEYS, RENDER_KEYS, add_config_options, add_output_options,
                                   apply_threads, config_from_args, trainer_keys)
from mint.commands.warmup import summary

HELP = "LoRA fine-tuning on a weighted coreset (--coreset), a random subset (--random RATIO), or all the data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--coreset", help="coreset file (.npz with `indices` and `weights`, from `mint select`)")
    which.add_argument("--random", "--ratio", dest="random", type=float, metavar="RATIO",
                       help="train on a seeded random subset of this fraction of the data, unit weights (a seed "
                            "stream of its own, not the warm-up sample; the same subset as `mint run`'s random "
                            "baseline at the same ratio and seed)")
    add_config_options(parser, [("data.train", "--data"), *MODEL_KEYS, *LORA_KEYS, *RENDER_KEYS, "seed", "threads",
                                ("train.weighting", "--weighting"), ("train.epochs", "--epochs"), ("train.lr", "--lr"),
                                ("train.batch_size", "--batch_size"), ("train.grad_accum", "--grad_accum"),
                                *trainer_keys("train")],
                       required=["data.train"], overrides=DATA_HELP)
    add_output_options(parser, "output folder (adapter/, optimizer.safetensors, manifest.json)")


def _pick(args: argparse.Namespace, cfg):
    """(indices as a function of the record count, weights, weighting): train_lora reads the data
    once and calls the function with its size."""
    from mint.errors import MintError
    from mint.model.warmup import random_subset_indices
    from mint.pipeline.coresets import check_source, load_coreset

    if args.coreset:
        coreset = load_coreset(args.coreset)
        if coreset.weights is None and cfg.train.weighting != "none":
            raise MintError(f"{args.coreset} has no 'weights' array, so --train.weighting "
                            f"{cfg.train.weighting} has nothing to apply; add the weights, or pass "
                            "--train.weighting none to train on the subset unweighted")

        def pick(n_records: int):
            check_source(coreset, cfg.data.train, n_records)
            return coreset.indices
        return pick, coreset.weights, cfg.train.weighting
    if args.random is not None:
        if not 0 < args.random <= 1:
            raise MintError(f"--random takes a fraction in (0, 1], got {args.random}")
        return (lambda n_records: random_subset_indices(n_records, args.random, cfg.seed)), None, "none"
    return None, None, cfg.train.weighting


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from mint.commands.session import output_folder
    from mint.pipeline.steps import train_call

    cfg = config_from_args(args)
    apply_threads(cfg)
    indices, weights, weighting = _pick(args, cfg)
    with output_folder(args, args.output_dir):
        out = train_call(cfg, Path(cfg.data.train), Path(args.output_dir), indices=indices, weights=weights,
                         weighting=weighting, overwrite=args.overwrite, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun, rank 0 speaks for the job
        print(summary("train", out))
    return 0
