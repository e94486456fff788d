"""No orphans: the alpha-scan workers of `mint select` end with it when it is killed during the
scan, by SIGTERM (handled like Ctrl-C) or by SIGKILL (the workers watch their parent)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads processes from /proc (Linux)")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has ended (only its exit status is left)


@pytest.fixture(scope="module")
def big_features(tmp_path_factory):
    """3000 examples: the 174-alpha scan on the 900-row pre-sample takes seconds with 2 workers."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("big_features")
    for kind in ("sft", "pt", "ifl"):
        x = rng.standard_normal((3000, 16)).astype(np.float32)
        np.save(folder / f"{kind}.npy", x / np.linalg.norm(x, axis=1, keepdims=True))
    return folder


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_scan_workers_end_with_their_parent(big_features, tmp_path, signum):
    out = tmp_path / "out"
    err_path = tmp_path / "stderr"
    # output to files: a surviving worker would hold a pipe open (`mint select | tee` never returned)
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mint", "select", "--features", str(big_features),
                                 "--output_dir", str(out), "--ratios", "0.2", "--n_jobs", "2", "--no_progress",
                                 "--alpha_method", "plateau"],  # the parallel grid scan
                                stdout=subprocess.DEVNULL, stderr=err,
                                env=dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1"))
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(workers) < 2:  # the scan has started once both workers exist
            assert proc.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.02)
            workers = _children(proc.pid)
        proc.send_signal(signum)
        code = proc.wait(timeout=60)
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "pool workers outlived `mint select`"
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    if signum == signal.SIGTERM:
        assert code == 143 and "mint select: terminated (SIGTERM); run the same command again" in err_path.read_text()
        (log,) = (out / "logs").glob("select-*.log")
        assert "ERROR mint.cli: mint select: terminated (SIGTERM)" in log.read_text()
        assert (out / ".mint.lock").read_text() == ""  # released on the way out
    else:
        assert code == -signal.SIGKILL
