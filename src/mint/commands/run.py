"""`mint run`: the whole pipeline from one config; no arguments = the offline demo."""
from __future__ import annotations

import argparse

from mint.commands.session import add_wait_option

HELP = "run the whole pipeline (warm-up, gradients, selection, training, evaluation); no arguments = offline demo"

_EPILOG = """\
config keys (set them in the YAML file given by --config, or override any of them on the
command line as --section.key VALUE [VALUE ...], e.g. --selection.ratios 0.05 0.1):
"""


def _epilog() -> str:
    from mint.pipeline.config import iter_fields

    rows = []
    for key, _tp, default, help_text in iter_fields():
        shown = "empty" if default is None else " ".join(map(str, default)) if isinstance(default, list) else default
        rows.append(f"  --{key} (default: {shown})\n      {help_text}")
    return _EPILOG + "\n".join(rows) + (
        "\n\nWith neither --config nor --data.train, `mint run` runs the offline demo: built-in data, "
        "the smollm2-135m-instruct model and the demo preset (mint.pipeline.config.DEMO_PRESET).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _epilog()
    parser.add_argument("--config", metavar="YAML", help="run configuration file (see the keys below)")
    parser.add_argument("--output_dir", help="run folder (same as the config key output_dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different run (or foreign files) in the run folder")
    parser.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    add_wait_option(parser)
    # Dotted config keys arrive as unparsed extra arguments and are checked by mint.pipeline.config,
    # which rejects unknown keys with a "did you mean" hint.
    parser.set_defaults(extra_args=[])


def run(args: argparse.Namespace) -> int:
    import os

    import yaml

    from mint.pipeline.config import load_config, parse_overrides

    overrides = parse_overrides(list(args.extra_args))
    if args.output_dir is not None:
        overrides["output_dir"] = args.output_dir
    cfg = load_config(args.config, overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    from mint.commands.options import apply_threads
    from mint.commands.session import output_folder
    from mint.pipeline import run_pipeline
    from mint.pipeline.report import short_summary

    apply_threads(cfg)
    with output_folder(args, cfg.output_dir) as log_file:
        result = run_pipeline(cfg, overwrite=args.overwrite, log_file=log_file)
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun, rank 0 speaks for the job
        print(short_summary(result.run_dir))
    return 0
