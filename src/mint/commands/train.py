"""`mint train`: weighted LoRA training on a coreset, a random subset, or the full data."""
from __future__ import annotations

import argparse

from mint.commands.warmup import add_model_arguments, common_options, summary

HELP = "LoRA fine-tuning on a weighted coreset (--coreset), a random subset (--random RATIO), or all the data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--coreset", help="coreset file (.npz with `indices` and `weights`, from `mint select`)")
    which.add_argument("--random", "--ratio", dest="random", type=float, metavar="RATIO",
                       help="train on a seeded random subset of this fraction of the data, unit weights (a seed "
                            "stream of its own, not the warm-up sample; the same subset as `mint run`'s random "
                            "baseline at the same ratio and seed)")
    parser.add_argument("--weighting", choices=("loss", "sampling", "none"), default="loss",
                        help="coreset weights: loss (w_i/mean(w) times each example's loss, default), sampling "
                             "(draw examples with probability proportional to w), none")
    # LESS: lr 2e-5 (for rank 128); small ranks and short CPU runs train faster with 1e-4 .. 1e-3
    add_model_arguments(parser, epochs=3.0, lr=2e-5)


def _check_coreset_source(coreset: dict, coreset_path, data_path, n_records: int) -> None:
    """Refuse a coreset made on other data when its file or the selection's summary.json says so."""
    import json
    from pathlib import Path

    from mint._io import sha256_file
    from mint.errors import MintError

    found = {key: coreset[key] for key in ("data_sha256", "n_records", "n") if key in coreset}
    summary_path = Path(coreset_path).parent / "summary.json"
    if summary_path.is_file():
        def walk(obj):
            if isinstance(obj, dict):
                for k, v in obj.items():
                    if k == "data_sha256" and isinstance(v, str):
                        found.setdefault("data_sha256", v)
                    walk(v)
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise MintError(f"{summary_path} is unreadable ({e}); restore it or move the coreset file out of "
                            "that folder") from e
        walk(summary)
        if isinstance(summary, dict) and isinstance(summary.get("n"), int):
            found.setdefault("n", summary["n"])
    n = found.get("n_records", found.get("n"))
    if n is not None and int(n) != n_records:
        raise MintError(f"{coreset_path} was selected from {int(n)} records but {data_path} holds {n_records}; "
                        "pass the data file the coreset was selected from")
    if "data_sha256" in found and found["data_sha256"] != sha256_file(data_path):
        raise MintError(f"{coreset_path} was selected from a different data file (sha256 differs from {data_path}); "
                        "pass the data file the coreset was selected from")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mint.errors import MintError
    from mint.model.train import load_coreset, train_lora
    from mint.model.warmup import random_subset_indices

    options = common_options(args)
    pick = weights = None
    weighting = args.weighting
    # `pick`: the indices as a function of the record count; train_lora reads the data once and calls it.
    if args.coreset:
        coreset = load_coreset(args.coreset)
        weights = coreset.get("weights")

        def pick(n_records: int):
            _check_coreset_source(coreset, args.coreset, args.data, n_records)
            return coreset["indices"]
    elif args.random is not None:
        if not 0 < args.random <= 1:
            raise MintError(f"--random takes a fraction in (0, 1], got {args.random}")
        weighting = "none"

        def pick(n_records: int):
            return random_subset_indices(n_records, args.random, args.seed)
    out = train_lora(args.model, args.data, args.output_dir, indices=pick,
                     weights=None if weights is None else np.asarray(weights), weighting=weighting, **options)
    print(summary("train", out))
    return 0
