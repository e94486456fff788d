"""`mint inspect`: format, schema, counts, duplicates, empty fields and token lengths of a data source."""
from __future__ import annotations

import argparse

from mint.commands.options import DATA_HELP, add_config_options, config_from_args

HELP = "inspect a data source before a run: format, schema, turns, duplicates, empty fields, token lengths"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_options(parser, [("data.train", "--data"), ("data.schema", "--schema"),
                                ("data.assistant_turns", "--assistant_turns"), ("data.template", "--template"),
                                ("data.max_length", "--max_length")], required=["data.train"], overrides=DATA_HELP)
    parser.add_argument("--model", metavar="M", help="a model folder, alias or cached hub id whose tokenizer gives "
                                                     "token lengths (default: none, no token section)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import json

    from mint.pipeline.inspection import inspect_data, inspect_text

    cfg = config_from_args(args)
    d = cfg.data
    report = inspect_data(d.train, model=args.model, max_length=d.max_length, schema=d.schema, template=d.template,
                          assistant_turns=d.assistant_turns, progress=not args.no_progress)
    if args.json:  # progress bars go to stderr: stdout holds the one JSON object
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(inspect_text(report), end="")
    return 0
