"""The `mint` command: a thin dispatcher over `mint.commands.<name>`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int`, and keeps heavy imports inside `run`, so `mint --help` is instant. Options
that are config keys are built from the config dataclasses (`mint.commands.options`). Process
settings (OpenMP wait policy, torch threads) are made here and in the commands, never inside
library calls. `mint` alone prints this help; `mint run` alone runs the offline demo.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mint import __version__
from mint.errors import MintError

# subcommand -> module under mint.commands, in the order of the pipeline
COMMANDS = {
    "run": "run",
    "inspect": "inspect",
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
        # a command module that fails to import is a bug: let the error show, never hide the command
        module = importlib.import_module(f"mint.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        # `mint` alone prints help, as git and pip do; `mint run` alone runs the offline demo.
        parser.print_help()
        return 0
    args, extra = parser.parse_known_args(argv)
    args.argv = argv  # for the first line of the command's log file (mint.commands.session)
    if extra:
        # Only commands that declare `extra_args` (e.g. `run`, whose dotted config keys are
        # checked by mint.pipeline.config with a "did you mean" hint) accept arguments argparse does not know.
        if not hasattr(args, "extra_args"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra_args = extra
    # OpenMP threads that spin while waiting make a busy machine several times slower (measured
    # 8x with 2 threads on a shared 2-core box; bench/omp_wait_policy.py); passive waiting costs
    # little on an idle one. Set here, at the edge, before any command imports torch.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not hasattr(args, "_run"):
        parser.print_help()
        return 2
    from mint.commands.session import Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # SIGTERM cleans up as Ctrl-C does (pool workers, temporary files, lock)
            return int(args._run(args) or 0)
    except (MintError, FileNotFoundError, FileExistsError) as e:
        # Library code raises these for bad input, with a message that names the fix.
        if args.verbose:
            raise
        print(f"mint {args.command}: error: {e}", file=sys.stderr)
        return 2
    except PermissionError as e:  # a folder checked writable up front changed since, or an input is unreadable
        if args.verbose:
            raise
        print(f"mint {args.command}: error: {e}; fix the permissions or choose another path", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"\nmint {args.command}: {how}; run the same command again to resume.", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
