"""Output folders: one writer at a time, the entries a command adds for itself, writability, and
folders built under a temporary name.

A command that writes an output folder holds `FolderLock` on it for as long as it writes: an
advisory lock (`fcntl.flock`) on the file `.mint.lock` inside the folder, which also records
the holder (pid, command, start time, host), so that a second writer is told who holds the
folder; with `wait=True` it waits instead. The lock belongs to the kernel, so it ends with its
process however that ends: the file left by a killed process is free and is taken over (with a
log line naming the process that left it). Under torchrun only rank 0 takes the lock: the other
ranks of a job cannot start work without rank 0 (they meet it in `init_process_group`, and
torchrun stops them when rank 0 fails), so the job holds one lock.

The lock file and the `logs/` folder are a command's own bookkeeping: checks of whether a
folder is empty or holds foreign files ignore them (`own_entries`), and `publish_folder` leaves
them where they are.

A folder built under a temporary name (`new_temp_folder`: `.NAME.<pid>-XXXX.tmp` beside it) is
moved into place by `publish_folder`; `remove_stale_temps` removes those a killed run left.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from mint.errors import MintError

__all__ = ["FolderLock", "LOCK_FILE", "LOG_DIR", "BOOKKEEPING", "own_entries", "check_writable", "read_holder",
           "new_temp_folder", "publish_folder", "remove_stale_temps"]

log = logging.getLogger(__name__)

LOCK_FILE = ".mint.lock"
LOG_DIR = "logs"
BOOKKEEPING = (LOCK_FILE, LOG_DIR)  # what a command adds to its output folder besides its outputs


def own_entries(folder: str | os.PathLike) -> list[Path]:
    """The entries of `folder` other than the lock file and `logs/` (sorted; [] when it does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name not in BOOKKEEPING)


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Make sure files can be written in `folder` (or, when it does not exist yet, in its nearest
    existing parent) with a probe file, removed at once; nothing else is created. A MintError
    naming the folder and the fix when that fails, so a command stops before any expensive work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MintError(f"the {what} {folder} is a file, not a folder; choose another --output_dir")
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise MintError(f"the {what} {folder} lies under {probe_in}, which is a file; choose another --output_dir")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mint-probe.", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if probe_in == folder else f" (it would be created in {probe_in})"
        raise MintError(f"cannot write in the {what} {folder}{where}: {e.strerror or e}; make it writable "
                        "(chmod u+w) or choose another --output_dir") from e
    return folder


def read_holder(folder: str | os.PathLike) -> dict | None:
    """What the lock file of `folder` says about its last holder (None: nothing readable)."""
    try:
        text = (Path(folder) / LOCK_FILE).read_text(encoding="utf-8")
        holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not recorded itself yet)"
    return (f"`mint {holder.get('command', '?')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


def _is_secondary_rank() -> bool:
    """A torchrun process other than rank 0 (which holds the lock for the whole job)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


class FolderLock:
    """`with FolderLock(folder, "select"):` hold the lock of an output folder (see the module
    docstring). A second holder gets a MintError naming the first, or waits when `wait`."""

    def __init__(self, folder: str | os.PathLike, command: str, *, wait: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if _is_secondary_rank():
            log.debug("torchrun rank %s: the lock of %s is held by rank 0", os.environ.get("RANK"), self.folder)
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks; say so once and go on unlocked
            log.warning("no file locks on this platform: nothing keeps a second writer out of %s", self.folder)
            return
        check_writable(self.folder)
        while self._fd is None:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder was removed between the two calls: again
                continue
            try:
                self._lock(fcntl, fd)
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
            else:  # the file was removed or replaced while we waited for it: lock the new one
                os.close(fd)
        try:
            self._check_enclosing(fcntl)
        except BaseException:
            self.release()
            raise
        self._record()

    def _check_enclosing(self, fcntl) -> None:
        """Refuse (or, with `wait`, wait) while another process writes a folder that holds this
        one, e.g. `mint select --output_dir RUN/select` during a `mint run` of RUN, or one inside
        it, two levels down (a run's step folders, `RUN/eval/base`): `mint run` of RUN while
        `mint select --output_dir RUN/select` runs."""
        here = self.folder.resolve()
        below = sorted(set(here.glob(f"*/{LOCK_FILE}")) | set(here.glob(f"*/*/{LOCK_FILE}")))
        for lock in [parent / LOCK_FILE for parent in here.parents] + below:
            parent = lock.parent
            if not lock.is_file():
                continue
            try:
                fd = os.open(lock, os.O_RDONLY)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = describe(read_holder(parent))
                    where = (f"{self.folder} lies inside {parent}" if parent in here.parents
                             else f"{self.folder} holds {parent}")
                    if not self.wait:
                        raise MintError(f"{where}, which {holder} is writing; wait for it to finish, pass --wait "
                                        "to wait for it, or choose another folder") from None
                    log.info("%s, which %s is writing; waiting for it (--wait)", where, holder)
                    fcntl.flock(fd, fcntl.LOCK_SH)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _lock(self, fcntl, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            holder = read_holder(self.folder)
        if not self.wait:
            raise MintError(f"{self.folder} is in use by {describe(holder)}, which is writing there; wait for it to "
                            "finish, pass --wait to wait for it, or choose another --output_dir")
        log.info("%s is in use by %s; waiting for it to finish (--wait)", self.folder, describe(holder))
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _record(self) -> None:
        """Write this process into the lock file; log a holder that left it without releasing it."""
        previous = read_holder(self.folder)
        if previous and previous.get("pid") != os.getpid():
            log.info("%s: taking over the lock left by %s, which ended without releasing it", self.folder,
                     describe(previous))
        holder = {"pid": os.getpid(), "command": self.command, "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv}
        data = (json.dumps(holder) + "\n").encode("utf-8")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self, *, remove: bool = False) -> None:
        """Empty the lock file (a clean end) and unlock it; the file stays unless `remove` (which a
        waiting process notices: it then locks a new file)."""
        if self._fd is None:
            return
        import fcntl

        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if remove:
                self.path.unlink(missing_ok=True)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# Folders built under a temporary name


def new_temp_folder(output: Path) -> Path:
    """An empty private folder beside `output`, named `.NAME.<pid>-XXXX.tmp`."""
    return Path(tempfile.mkdtemp(prefix=f".{output.name}.{os.getpid()}-", suffix=".tmp", dir=output.parent))


def publish_folder(tmp: Path, output: Path) -> None:
    """Move the finished folder `tmp` into place as `output` with renames only: a new output is one
    rename. An existing folder stays where it is (it may hold the lock and log of the command
    writing it, which must not move): its old entries move aside, manifest.json first, and the
    new ones move in, manifest.json last, since its presence marks a finished output."""
    if not output.exists():
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        os.rename(tmp, output)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-{os.getpid()}-", dir=output.parent))
    for entry in sorted(own_entries(output), key=lambda p: p.name != "manifest.json"):
        os.rename(entry, old / entry.name)
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "manifest.json"):
        os.rename(entry, output / entry.name)
    tmp.rmdir()
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(output: Path) -> None:
    """Remove the folders a killed run left beside `output`: `.NAME.<pid>-XXXX.tmp` (a temporary
    output) and `.NAME.old-<pid>-XXXX` (old outputs being replaced), when that pid is not running
    (or absent: the names of older versions)."""
    name = re.escape(output.name)
    patterns = (re.compile(rf"\.{name}\.(?:(\d+)-)?[a-z0-9_]+\.tmp"), re.compile(rf"\.{name}\.old-(\d+)(?:-[a-z0-9_]+)?"))
    if not output.parent.is_dir():
        return
    for path in sorted(output.parent.glob(f".{output.name}.*")):
        match = next((m for m in (p.fullmatch(path.name) for p in patterns) if m), None)
        if match is None or not path.is_dir() or (match.group(1) and _running(int(match.group(1)))):
            continue
        log.info("removing %s, left by an interrupted run", path)
        shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
