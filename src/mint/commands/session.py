"""What every command that writes an output folder does around its work (`output_folder`):

- it holds the folder's lock (`mint._folders.FolderLock`): a second writer is refused with the
  holder's pid and start time, or waits with `--wait`;
- it appends its log lines (INFO and up, DEBUG with `-v`), Python warnings and its final error
  to `<folder>/logs/<command>-<start time>.log` (ranks other than 0 of a torchrun job add
  `-rank<R>`), so a run that failed overnight can be read afterwards;
- a folder it created and left without outputs (refused input, say) is removed again.

Logging handlers are configured here and in `mint.cli` only, never by library code.
"""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mint._folders import LOG_DIR, FolderLock, own_entries
from mint.errors import MintError

__all__ = ["output_folder", "add_wait_option", "LOG_FORMAT", "Terminated", "sigterm_as_interrupt"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt, so that the same
    clean-up runs (pool workers stopped, temporary folders removed, the lock released)."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated` (main thread only; elsewhere a no-op)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="if another mint command is writing the output folder, wait for it instead of stopping")


@contextmanager
def output_folder(args: argparse.Namespace, folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the lock of `folder` and log into it while the block runs; yields the log file."""
    folder = Path(folder)
    created = not folder.exists()
    lock = FolderLock(folder, args.command, wait=bool(getattr(args, "wait", False)))
    lock.acquire()
    log_file = None
    try:
        with _log_file(folder, args) as log_file:
            yield log_file
    finally:
        empty = created and not own_entries(folder)
        if empty and log_file is not None:
            log_file.unlink(missing_ok=True)
            _rmdir(log_file.parent)
        lock.release(remove=empty)
        if empty:
            _rmdir(folder)


def _rmdir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (or gone): leave it


def _log_name(command: str) -> str:
    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else "0"
    return f"{command}-{time.strftime('%Y%m%d-%H%M%S')}" + (f"-rank{rank}" if rank not in ("", "0") else "") + ".log"


@contextmanager
def _log_file(folder: Path, args: argparse.Namespace) -> Iterator[Path]:
    path = folder / LOG_DIR / _log_name(args.command)
    path.parent.mkdir(parents=True, exist_ok=True)
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(level)
    root = logging.getLogger()
    root_level = root.level
    root.setLevel(min(root_level or logging.WARNING, level))  # as mint.cli sets it, also where it could not
    argv = getattr(args, "argv", None) or sys.argv[1:]
    _to_file(handler, logging.INFO, f"mint {' '.join(shlex.quote(a) for a in argv)} (pid {os.getpid()})")
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        yield path
    except (MintError, FileNotFoundError, FileExistsError) as e:
        _to_file(handler, logging.ERROR, f"mint {args.command}: error: {e}")  # the console gets it from mint.cli
        raise
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        _to_file(handler, logging.ERROR, f"mint {args.command}: {how}; run the same command again to resume")
        raise
    except BaseException:
        _to_file(handler, logging.ERROR, f"mint {args.command}: failed", exc_info=sys.exc_info())
        raise
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(root_level)
        handler.close()


def _to_file(handler: logging.Handler, level: int, message: str, exc_info=None) -> None:
    """A record for the log file alone (the console shows these lines its own way, or not at all)."""
    record = logging.getLogger("mint.cli").makeRecord("mint.cli", level, __file__, 0, message, None, exc_info)
    handler.handle(record)
