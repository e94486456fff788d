"""`mint select`: MINT coreset selection from gradient features (a thin wrapper over
`mint.pipeline.select_step.run_selection`)."""
from __future__ import annotations

HELP = "select weighted coresets from gradient features (MINT facility location, automatic alpha)"


def add_arguments(p) -> None:
    p.add_argument("--features", required=True, metavar="DIR",
                   help="output folder of `mint grads` (or a folder with sft.npy, pt.npy, ifl.npy)")
    p.add_argument("--output_dir", required=True, metavar="OUT", help="folder for the coresets, curve, plots, summary")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.05, 0.1, 0.15],
                   help="subset sizes as fractions of the data; smaller subsets are prefixes of the largest (default: 0.05 0.1 0.15)")
    p.add_argument("--method", default="mint", choices=["mint", "craig", "random", "pt", "ifl"],
                   help="mint (default); baselines: craig (SFT features), random, pt only, ifl only")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--alpha", type=float, default=None, help="manual alpha in (0, 1); default: automatic search")
    how.add_argument("--coef", type=float, nargs=3, default=None, metavar=("C_SFT", "C_PT", "C_IFL"),
                     help="explicit distance coefficients instead of alpha (each >= 0, not all 0)")
    p.add_argument("--alpha_method", default="plateau", choices=["plateau", "plateau_scaled", "golden"],
                   help="automatic alpha: plateau (the reference's rule, default), plateau_scaled (step-aware), "
                        "golden (BRIEF: minimise E_PT + E_IFL)")
    p.add_argument("--preheat_ratio", type=float, default=0.3, help="pre-sample fraction for the alpha search (default 0.3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pre-sample and of the random baseline (default 0)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="the data file the features came from: also write the selected records as coreset_R.jsonl")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="distance precision: float32 (fast, default) or float64 (half the size limit, exact)")
    p.add_argument("--n_jobs", type=int, default=None, help="worker processes for the alpha scan (default: all cores)")
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


def run(args) -> int:
    from pathlib import Path

    from mint._io import read_json
    from mint.pipeline.select_step import run_selection, summary_text

    run_selection(
        args.features, args.output_dir, ratios=args.ratios, method=args.method, alpha=args.alpha,
        alpha_method=args.alpha_method, coef=args.coef, preheat_ratio=args.preheat_ratio, seed=args.seed,
        data=args.data, overwrite=args.overwrite, dtype=args.dtype, n_jobs=args.n_jobs,
        plateau_min_alpha=args.plateau_min_alpha, golden_tol=args.golden_tol, golden_max_iter=args.golden_max_iter,
        max_memory_gb=args.max_memory_gb, progress=not args.no_progress,
        cache_distances={"auto": None, "on": True, "off": False}[args.distance_cache],
    )
    summary = read_json(Path(args.output_dir) / "summary.json")
    print(summary_text(summary), end="")
    print(f"outputs in {args.output_dir}")
    return 0
