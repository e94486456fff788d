"""`mint export`: coresets as JSONL records with weights, chat messages, LLaMA-Factory and axolotl entries."""
from __future__ import annotations

import argparse

from mint.choices import MATERIALIZE
from mint.commands.options import add_config_options, config_from_args
from mint.commands.session import add_wait_option

HELP = "export the coresets of a selection folder for other trainers (JSONL, messages, LLaMA-Factory, axolotl, TRL)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("LLaMA-Factory and axolotl ignore the `weight` field unless told to use it; "
                     "`mint train --coreset` applies the weights.")
    add_config_options(parser, [("data.train", "--data"), ("data.assistant_turns", "--assistant_turns"), "seed"],
                       required=["data.train"],
                       overrides={"data.train": {"help": "the data file the selection was made from"},
                                  "data.assistant_turns": {"help": "the assistant turns training learned: all | last "
                                                                   "(the trainer entries then learn the same)"},
                                  "seed": {"help": "seed of --materialize_weights resample (default: 0)"}})
    parser.add_argument("--selection", required=True, metavar="DIR",
                        help="output folder of `mint select` (holds coreset_R.npz)")
    parser.add_argument("--output_dir", help="where to write the exports (default: the selection folder)")
    parser.add_argument("--ratios", type=float, nargs="+", help="only these ratios (default: all)")
    parser.add_argument("--name", default="mint_coreset", help="dataset name prefix for LLaMA-Factory entries")
    parser.add_argument("--materialize_weights", default="none", choices=MATERIALIZE,
                        help="for trainers that ignore weights: replicate (each record round(weight) times) or "
                             "resample (the coreset's size, drawn proportionally to the weights, seeded); default none")
    add_wait_option(parser)


def run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext
    from pathlib import Path

    from mint.commands.session import output_folder
    from mint.pipeline.export import export_coreset

    cfg = config_from_args(args)
    # the default output is the selection folder, an input: locked where it exists, never created
    writes = args.output_dir or (args.selection if Path(args.selection).is_dir() else None)
    with output_folder(args, writes) if writes else nullcontext():
        out = export_coreset(cfg.data.train, args.selection, args.output_dir, ratios=args.ratios, name=args.name,
                             assistant_turns=cfg.data.assistant_turns, materialize_weights=args.materialize_weights,
                             seed=cfg.seed)
    for ratio, paths in sorted(out.items()):
        print(f"ratio {ratio:.2f}: {paths['records']}  {paths['messages']}  {paths['sharegpt']}  {paths['trl']}")
    folder = next(iter(out.values()))["records"].parent
    print(f"LLaMA-Factory: {folder / 'dataset_info.json'}; axolotl: {folder / 'axolotl_datasets.yaml'}; "
          f"notes: {folder / 'EXPORTS.md'}")
    return 0
