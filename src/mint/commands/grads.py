"""`mint grads`: SFT/PT/IFL gradient features of a data set into a resumable feature store."""
from __future__ import annotations

import argparse

HELP = "compute per-example gradient features (SFT, PT, IFL) with the warm-up adapter"


def _proj_dim(text: str):
    if text.lower() in ("none", "full"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--proj_dim takes integers or 'none', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--proj_dim must be positive, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="instruction data: JSON array or JSON Lines (.gz ok)")
    parser.add_argument("--model", required=True, help="base model folder, hub id, or smollm2-135m-instruct")
    parser.add_argument("--warmup_dir", required=True, help="output folder of `mint warmup` (adapter + optimizer state)")
    parser.add_argument("--output_dir", required=True, help="feature store folder (created; resumed if it exists)")
    parser.add_argument("--proj_dim", type=_proj_dim, nargs="+", default=[8192],
                        help="projection dimension(s), all computed in one pass; 'none' keeps raw gradients "
                             "(default 8192, as in LESS and MINT)")
    parser.add_argument("--grad_type", choices=("adam", "sgd", "sign"), default="adam",
                        help="adam: precondition with the warm-up AdamW state (default); sgd: plain gradient; sign")
    parser.add_argument("--projection", choices=("rademacher", "gaussian"), default="rademacher",
                        help="random projection matrix entries (default rademacher)")
    parser.add_argument("--batch_size", type=int, default=8, help="examples per forward/backward pass (default 8)")
    parser.add_argument("--max_length", type=int, default=512, help="tokens per example; prompts are cut from the left (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="projection seed (default 0)")
    parser.add_argument("--template", choices=("auto", "chat", "plain"), default="auto",
                        help="prompt rendering: the tokenizer's chat template when it has one (auto), or plain")
    parser.add_argument("--schema", choices=("auto", "alpaca", "chat", "prompt_completion"), default="auto",
                        help="record schema (default: detected from the first record)")
    parser.add_argument("--long_prompts", choices=("error", "truncate"), default="error",
                        help="a prompt that alone fills max_length: error (default) or cut it from the left")
    parser.add_argument("--shard_size", type=int, default=64,
                        help="examples per resumable shard and per projection call (default 64)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--cache_mb", type=int, default=1024,
                        help="memory for cached projection tiles in MiB; tiles beyond it are regenerated (default 1024)")
    parser.add_argument("--overwrite", action="store_true", help="replace a store made with other settings")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mint.errors import MintError
    from mint.model.gradients import compute_features
    from mint.model.store import read_manifest

    dims = args.proj_dim
    if None in dims:
        if len(dims) > 1:
            raise MintError("--proj_dim none cannot be combined with numbers; run it separately")
        proj_dim = None
    else:
        proj_dim = dims if len(dims) > 1 else dims[0]
    out = compute_features(
        args.model, args.data, args.warmup_dir, args.output_dir, proj_dim=proj_dim, grad_type=args.grad_type,
        batch_size=args.batch_size, max_length=args.max_length, seed=args.seed, template=args.template,
        schema=args.schema, long_prompts=args.long_prompts, projection=args.projection, shard_size=args.shard_size, device=args.device,
        cache_bytes=args.cache_mb << 20, overwrite=args.overwrite, progress=not args.no_progress)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        manifest = read_manifest(out)
        s = manifest["settings"]
        info = manifest["info"]
        print(f"mint grads: {manifest['n']} examples -> {out}\n"
              f"  kinds sft, pt, ifl (raw and normalised), dims {', '.join(manifest['dims'])}, "
              f"grad_type {s['grad_type']}, grad_dim {info.get('grad_dim')}, seed {s['seed']}, "
              f"processes {info.get('world_size')}\n"
              f"  load with: mint.load_features({str(out)!r})")
    return 0
