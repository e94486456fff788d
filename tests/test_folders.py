"""mint._folders: the output-folder lock between processes (refusal naming the holder, --wait, a
killed holder's lock taken over, torchrun ranks), writability, and folders built under a
temporary name (publishing keeps the lock and logs in place; a killed run's leftovers go)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO
from mint._folders import (LOCK_FILE, FolderLock, check_writable, new_temp_folder, own_entries, publish_folder,
                           read_holder, remove_stale_temps)
from mint.errors import MintError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX file locks")

# Holds the lock of argv[1] (as `mint holder`) until its stdin closes; then releases it.
HOLDER = """
import sys
from mint._folders import FolderLock

lock = FolderLock(sys.argv[1], "holder", wait=len(sys.argv) > 2)
lock.acquire()
print("acquired", flush=True)
sys.stdin.read()
lock.release()
"""


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"))


def _holder(folder, *extra, stderr=subprocess.DEVNULL):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), *extra], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=stderr, env=_env(), text=True)


def wait_for_holder(folder, pid: int, timeout: float = 60) -> None:
    """Until the lock file of `folder` names `pid` (the holder process has the lock)."""
    deadline = time.monotonic() + timeout
    while (read_holder(folder) or {}).get("pid") != pid:
        assert time.monotonic() < deadline, "the holder did not take the lock"
        time.sleep(0.05)


@pytest.fixture()
def held(tmp_path):
    """(folder, holder process) with the lock held by another process."""
    folder = tmp_path / "out"
    proc = _holder(folder)
    wait_for_holder(folder, proc.pid)
    yield folder, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_a_second_writer_is_told_who_holds_the_folder(held):
    folder, proc = held
    with pytest.raises(MintError, match=rf"{folder} is in use by `mint holder` \(pid {proc.pid} on .*, started "
                                        r"\d{4}-\d\d-\d\d .*pass --wait to wait for it, or choose another"):
        FolderLock(folder, "select").acquire()
    proc.communicate("", timeout=30)  # the holder releases: the folder is free again, its lock file empty
    assert proc.returncode == 0 and read_holder(folder) is None
    with FolderLock(folder, "select"):
        assert read_holder(folder)["pid"] == os.getpid() and read_holder(folder)["command"] == "select"


def test_wait_waits_for_the_holder(held, tmp_path):
    folder, first = held
    log_path = tmp_path / "waiter.err"
    with open(log_path, "w") as err:  # a second process that waits (logging to stderr, as the CLI does)
        waiter = subprocess.Popen([sys.executable, "-c", "import logging; logging.basicConfig(level=logging.INFO)\n"
                                   + HOLDER, str(folder), "--wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=err, env=_env(), text=True)
    try:
        deadline = time.monotonic() + 60
        while "waiting for it to finish" not in log_path.read_text():
            assert waiter.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        assert (read_holder(folder) or {}).get("pid") == first.pid  # still the first one's
        first.communicate("", timeout=30)
        wait_for_holder(folder, waiter.pid)
        out, _ = waiter.communicate("", timeout=30)
        assert waiter.returncode == 0 and out == "acquired\n"
    finally:
        if waiter.poll() is None:
            waiter.kill()


def test_the_lock_of_a_killed_process_is_taken_over(held, caplog):
    folder, proc = held
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert read_holder(folder)["pid"] == proc.pid  # its record stays: it never released the lock
    with caplog.at_level(logging.INFO, logger="mint._folders"), FolderLock(folder, "run"):
        assert read_holder(folder)["pid"] == os.getpid()
    assert f"taking over the lock left by `mint holder` (pid {proc.pid}" in caplog.text


def test_torchrun_ranks_share_the_lock_of_rank_0(held, monkeypatch):
    folder, _ = held
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with FolderLock(folder, "grads"):  # rank 1: rank 0 holds the job's lock
        pass
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(MintError, match="in use by `mint holder`"):
        FolderLock(folder, "grads").acquire()


def test_a_removed_lock_file_is_not_locked_twice(tmp_path):
    """A holder that removes its lock file as it ends (a folder it created and left empty): the
    next holder locks a new file, not the removed one."""
    folder = tmp_path / "out"
    first = FolderLock(folder, "a")
    first.acquire()
    first.release(remove=True)
    assert not (folder / LOCK_FILE).exists()
    with FolderLock(folder, "b"):
        assert (folder / LOCK_FILE).is_file()


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked in the nearest parent, nothing created
    (tmp_path / "f").write_text("x")
    with pytest.raises(MintError, match=r"output folder .*f is a file, not a folder; choose another --output_dir"):
        check_writable(tmp_path / "f")
    with pytest.raises(MintError, match=r"lies under .*f, which is a file"):
        check_writable(tmp_path / "f" / "sub")
    with pytest.raises(MintError, match="is a file, not a folder"):
        FolderLock(tmp_path / "f", "train").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no probe file left


def test_publish_keeps_the_lock_and_logs_in_place(tmp_path):
    out = tmp_path / "train"
    with FolderLock(out, "train"):
        (out / "logs").mkdir()
        (out / "logs" / "train-1.log").write_text("log")
        inode = (out / LOCK_FILE).stat().st_ino
        for version in ("old", "new"):
            tmp = new_temp_folder(out)
            assert tmp.name.startswith(f".train.{os.getpid()}-") and tmp.name.endswith(".tmp")
            (tmp / "adapter").mkdir()
            (tmp / "adapter" / "weights").write_text(version)
            (tmp / "manifest.json").write_text(version)
            publish_folder(tmp, out)
            assert [p.name for p in own_entries(out)] == ["adapter", "manifest.json"]
            assert (out / "manifest.json").read_text() == version and not tmp.exists()
        assert (out / LOCK_FILE).stat().st_ino == inode and (out / "logs" / "train-1.log").read_text() == "log"
        assert read_holder(out)["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # nothing left beside it
    fresh = tmp_path / "fresh"
    tmp = new_temp_folder(fresh)
    publish_folder(tmp, fresh)  # a new output: one rename
    assert fresh.is_dir() and not tmp.exists()


def test_remove_stale_temps(tmp_path, caplog):
    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = [f".run.{dead}-abc_12.tmp", ".run.k3j4h5g6.tmp", f".run.old-{dead}", f".run.old-{dead}-x1y2z3a4"]
    kept = [f".run.{os.getpid()}-abc.tmp", ".run.x.k3j4h5g6.tmp", ".other.k3j4h5g6.tmp", "run"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
    (tmp_path / ".run.checkpoint.pt").write_text("resume state")
    with caplog.at_level(logging.INFO, logger="mint._folders"):
        remove_stale_temps(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".run.checkpoint.pt"])
    assert caplog.text.count("left by an interrupted run") == 4


def test_a_folder_inside_a_folder_being_written_is_refused(held):
    """`mint select --output_dir RUN/select` while another process writes RUN (a `mint run`)."""
    folder, proc = held
    inner = folder / "select"
    with pytest.raises(MintError, match=rf"{inner} lies inside {folder}, which `mint holder` \(pid {proc.pid}"):
        with FolderLock(inner, "select"):
            pass
    assert read_holder(inner) is None  # refused before it recorded itself
    proc.communicate("", timeout=30)
    with FolderLock(inner, "select"):  # the outer writer is gone: the inner folder is free
        assert read_holder(inner)["command"] == "select"


def test_a_folder_holding_a_folder_being_written_is_refused(tmp_path):
    """`mint run` of RUN while another process writes RUN/select (or RUN/eval/base)."""
    run = tmp_path / "run"
    for inner in (run / "select", run / "eval" / "base"):
        proc = _holder(inner)
        wait_for_holder(inner, proc.pid)
        with pytest.raises(MintError, match=rf"{run} holds {inner}, which `mint holder` \(pid {proc.pid}"):
            with FolderLock(run, "run"):
                pass
        proc.communicate("", timeout=30)
    with FolderLock(run, "run"):
        assert read_holder(run)["command"] == "run"
