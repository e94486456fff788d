"""The `mint` command: a thin dispatcher over `mint.commands.<name>`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`, and keeps heavy imports inside `run`, so `mint --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mint import __version__
from mint.errors import MintError

# subcommand -> module under mint.commands, in the order of the pipeline
COMMANDS = {
    "run": "run",
    "warmup": "warmup",
    "grads": "grads",
    "select": "select",
    "train": "train",
    "eval": "eval",
    "export": "export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mint",
        description="MINT: multi-constrained coreset selection for instruction tuning.",
    )
    parser.add_argument("--version", action="version", version=f"mint-coreset {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"mint.commands.{module_name}")
        except ModuleNotFoundError as e:
            if e.name == f"mint.commands.{module_name}":
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        # `mint` alone runs the offline demo, the same as `mint run` with no arguments.
        argv = ["run"] if "run" in COMMANDS else ["--help"]
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Only commands that declare `extra_args` (e.g. `run`, whose dotted config keys are
        # checked by mint.pipeline.config with a "did you mean" hint) accept arguments argparse does not know.
        if not hasattr(args, "extra_args"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra_args = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (MintError, FileNotFoundError, FileExistsError) as e:
        # Library code raises these for bad input, with a message that names the fix.
        if args.verbose:
            raise
        print(f"mint {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nmint {args.command}: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
