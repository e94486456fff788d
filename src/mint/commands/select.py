"""`mint select`: MINT coreset selection from gradient features (a thin wrapper over
`mint.pipeline.select_step.run_selection`)."""
from __future__ import annotations

import argparse

from mint.choices import SELECTION_ENGINES
from mint.commands.options import add_config_options, config_from_args
from mint.commands.session import add_wait_option

HELP = "select weighted coresets from gradient features (MINT facility location, automatic alpha)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, metavar="DIR",
                   help="output folder of `mint grads` (or a folder with sft.npy, pt.npy, ifl.npy)")
    p.add_argument("--output_dir", required=True, metavar="OUT", help="folder for the coresets, curve, plots, summary")
    add_config_options(
        p, [("selection.ratios", "--ratios"), ("selection.method", "--method"), ("selection.alpha", "--alpha"),
            ("selection.coef", "--coef"), ("selection.alpha_method", "--alpha_method"),
            ("selection.preheat_ratio", "--preheat_ratio"), ("selection.preheat_max", "--preheat_max"),
            ("selection.strategy", "--strategy"), ("selection.partition_size", "--partition_size"),
            ("selection.partition", "--partition"), ("selection.second_round", "--second_round"), "seed",
            ("data.train", "--data")],
        overrides={"selection.coef": {"nargs": 3, "metavar": ("C_SFT", "C_PT", "C_IFL")},
                   "data.train": {"metavar": "FILE", "help": "the data file the features came from: also write the "
                                                             "selected records as coreset_R.jsonl"}})
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="distance precision: float32 (fast, default) or float64 (half the size limit, exact)")
    p.add_argument("--engine", default="auto", choices=list(SELECTION_ENGINES),
                   help="the exact engine's greedy, weights and alpha scan: numba (compiled), numpy, or auto (numba "
                        "when installed and the matrix has >= 1,000 rows). The same selection either way")
    p.add_argument("--n_jobs", type=int, default=None,
                   help="worker processes for the alpha scan and the parts of a partitioned selection (default: all cores)")
    p.add_argument("--plateau_min_alpha", type=float, default=0.95,
                   help="prefer the first plateau at or above this alpha (default 0.95, as the reference)")
    p.add_argument("--golden_tol", type=float, default=1e-3, help="golden search: stop when the bracket is this narrow")
    p.add_argument("--golden_max_iter", type=int, default=40, help="golden search: at most this many iterations")
    p.add_argument("--max_memory_gb", type=float, default=None,
                   help="refuse to start above this memory estimate (default: the memory available now)")
    p.add_argument("--distance_cache", default="auto", choices=["auto", "on", "off"],
                   help="keep whole d_PT and d_IFL matrices (3 N x N, faster) or build one combined matrix "
                        "block by block (1 N x N); auto: cache when it fits in half the free memory. Same selection.")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of a different earlier run in OUT")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_wait_option(p)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from mint._io import read_json
    from mint.commands.session import output_folder
    from mint.pipeline.select_step import summary_text
    from mint.pipeline.steps import select_call

    cfg = config_from_args(args)
    with output_folder(args, args.output_dir):
        select_call(cfg, Path(args.features), Path(args.output_dir), cfg.data.train, overwrite=args.overwrite,
                    dtype=args.dtype, n_jobs=args.n_jobs, engine=args.engine, plateau_min_alpha=args.plateau_min_alpha,
                    golden_tol=args.golden_tol, golden_max_iter=args.golden_max_iter,
                    max_memory_gb=args.max_memory_gb, progress=not args.no_progress,
                    cache_distances={"auto": None, "on": True, "off": False}[args.distance_cache])
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 wrote the outputs
        summary = read_json(Path(args.output_dir) / "summary.json")
        print(summary_text(summary), end="")
        print(f"outputs in {args.output_dir}")
    return 0
