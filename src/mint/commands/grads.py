"""`mint grads`: SFT/PT/IFL gradient features of a data set into a resumable feature store."""
from __future__ import annotations

import argparse

from mint.commands.options import (DATA_HELP, MODEL_KEYS, RENDER_KEYS, add_config_options, add_output_options, apply_threads,
                                   config_from_args)

HELP = "compute per-example gradient features (SFT, PT, IFL) with the warm-up adapter"


def _proj_dim(text: str):
    if text.lower() in ("none", "full", "null"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grads.proj_dim takes integers or 'none', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--grads.proj_dim must be positive, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(
        parser, [("data.train", "--data"), *MODEL_KEYS, *RENDER_KEYS, "seed", "threads", ("grads.proj_dim", "--proj_dim"),
                 ("grads.grad_type", "--grad_type"), ("grads.batch_size", "--batch_size"),
                 ("grads.storage_dtype", "--storage_dtype"), ("grads.projection", "--projection"),
                 ("grads.sjlt_s", "--sjlt_s"), ("grads.shard_size", "--shard_size"), ("grads.cache_mb", "--cache_mb"),
                 ("grads.buffer_mb", "--buffer_mb")],
        required=["data.train"],
        # several dimensions come from one pass here, so this option takes a list and is read by
        # `run` itself (dest differs from the key, so it is not applied to the one-number config key)
        overrides={**DATA_HELP, "grads.proj_dim": {"dest": "proj_dims", "type": _proj_dim, "nargs": "+", "metavar": "DIM",
                                      "help": "projection dimension(s), all computed in one pass; 'none' keeps raw "
                                              "gradients (default: 8192, as in LESS and MINT)"}})
    parser.add_argument("--warmup_dir", required=True, help="output folder of `mint warmup` (adapter + optimizer state)")
    add_output_options(parser, "feature store folder (created; resumed if it exists)")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from mint.commands.session import output_folder
    from mint.errors import MintError
    from mint.model.store import read_manifest
    from mint.pipeline.steps import grads_call

    cfg = config_from_args(args)
    apply_threads(cfg)
    dims = getattr(args, "proj_dims", [cfg.grads.proj_dim])
    if None in dims and len(dims) > 1:
        raise MintError("--grads.proj_dim none cannot be combined with numbers; run it separately")
    proj_dim = dims if len(dims) > 1 else dims[0]
    with output_folder(args, args.output_dir):  # under torchrun rank 0 holds the lock for the job
        out = grads_call(cfg, Path(cfg.data.train), Path(args.warmup_dir), Path(args.output_dir), proj_dim=proj_dim,
                         overwrite=args.overwrite, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        manifest = read_manifest(out)
        s, info = manifest["settings"], manifest["info"]
        print(f"mint grads: {manifest['n']} examples -> {out}\n"
              f"  kinds sft, pt, ifl (raw and normalised), dims {', '.join(manifest['dims'])}, "
              f"grad_type {s['grad_type']}, projection {s['projection'].get('type')}, grad_dim {info.get('grad_dim')}, "
              f"seed {s['seed']}, "
              f"processes {info.get('world_size')}\n"
              f"  load with: mint.load_features({str(out)!r})")
    return 0
