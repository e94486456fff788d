"""The commands that write an output folder: one writer per folder (a second is refused with the
holder's pid, or waits with --wait), a log file per invocation in `<folder>/logs/`, a folder
checked writable before any work, and no folder left behind by a refused command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from mint.cli import main
from test_folders import HOLDER, wait_for_holder

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX file locks")


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")


@pytest.fixture()
def npy_dir(tmp_path):
    """Plain features of 60 examples: a selection takes about a second."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "features"
    folder.mkdir()
    for kind in ("sft", "pt", "ifl"):
        np.save(folder / f"{kind}.npy", rng.standard_normal((60, 8)).astype(np.float32))
    return folder


def _select_args(features, out, *extra):
    return ["select", "--features", str(features), "--output_dir", str(out), "--n_jobs", "1", "--no_progress",
            "--ratios", "0.1", *extra]


@pytest.fixture()
def holder(tmp_path):
    """A process holding the lock of tmp_path/out (as `mint holder`) until it is told to release."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, env=_env(), text=True)
    wait_for_holder(out, proc.pid)
    yield out, proc
    if proc.poll() is None:
        proc.communicate("", timeout=30)


@pytest.mark.parametrize("command", ["run", "warmup", "grads", "select", "train", "eval", "export"])
def test_every_writer_is_refused_while_another_holds_the_folder(holder, npy_dir, tmp_path, capsys, command):
    out, proc = holder
    data = ["--data.train", str(tmp_path / "data.jsonl")]
    args = {"run": ["run", *data, "--output_dir", str(out)],
            "warmup": ["warmup", *data, "--output_dir", str(out)],
            "grads": ["grads", *data, "--warmup_dir", str(tmp_path), "--output_dir", str(out)],
            "select": _select_args(npy_dir, out),
            "train": ["train", *data, "--random", "0.5", "--output_dir", str(out)],
            "eval": ["eval", "--data.eval", str(tmp_path / "data.jsonl"), "--output_dir", str(out)],
            "export": ["export", *data, "--selection", str(tmp_path), "--output_dir", str(out)]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"mint {command}: error: {out} is in use by `mint holder` (pid {proc.pid} on " in err
    assert "pass --wait to wait for it" in err
    assert [p.name for p in out.iterdir()] == [".mint.lock"]  # nothing written, not even a log


def test_select_with_wait_runs_once_the_holder_is_done(holder, npy_dir, tmp_path):
    out, first = holder
    err_path = tmp_path / "select.err"
    with open(err_path, "w") as err:
        waiting = subprocess.Popen([sys.executable, "-m", "mint", *_select_args(npy_dir, out, "--wait")],
                                   stdout=subprocess.DEVNULL, stderr=err, env=_env())
    try:
        deadline = time.monotonic() + 60
        while "waiting for it to finish (--wait)" not in err_path.read_text():
            assert waiting.poll() is None and time.monotonic() < deadline, err_path.read_text()
            time.sleep(0.05)
        assert not (out / "summary.json").exists()
        first.communicate("", timeout=30)
        assert waiting.wait(timeout=120) == 0, err_path.read_text()
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert (out / "summary.json").is_file() and (out / ".mint.lock").read_text() == ""  # released


def test_a_log_file_per_invocation_with_the_final_error(npy_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_select_args(npy_dir, out)) == 0
    logs = sorted((out / "logs").glob("select-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert text.splitlines()[0].endswith(f"INFO mint.cli: mint {' '.join(_select_args(npy_dir, out))} (pid {os.getpid()})")
    assert "INFO mint.selection.core: total:" in text
    for log in logs:  # the next invocation gets a file of its own (its name carries the second it started)
        os.rename(log, log.with_name("select-earlier.log"))
    assert main(_select_args(npy_dir, out, "--seed", "1")) == 2  # another selection in the same folder
    assert "--overwrite" in capsys.readouterr().err
    (log,) = [p for p in (out / "logs").glob("select-*.log") if p.name != "select-earlier.log"]
    last = log.read_text().splitlines()[-1]
    assert " ERROR mint.cli: mint select: error: " in last and "--overwrite" in last


def test_a_refused_command_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(_select_args(tmp_path / "missing", out)) == 2
    assert "features folder not found" in capsys.readouterr().err
    assert not out.exists()


def test_mint_run_hands_its_log_file_to_the_pipeline(tmp_path, monkeypatch, capsys):
    import mint.pipeline
    from mint.errors import MintError

    def fake_pipeline(cfg, *, overwrite, log_file):  # the report links the log file it is given
        seen.append((log_file, log_file.read_text()))
        raise MintError("stopped here")

    seen = []
    monkeypatch.setattr(mint.pipeline, "run_pipeline", fake_pipeline)
    assert main(["run", "--data.train", str(tmp_path / "d.jsonl"), "--output_dir", str(tmp_path / "run")]) == 2
    ((log_file, text),) = seen
    assert log_file.parent == tmp_path / "run" / "logs" and log_file.name.startswith("run-")
    assert "INFO mint.cli: mint run --data.train" in text
    assert not (tmp_path / "run").exists()  # it wrote nothing, so its new folder (and log) are gone again


@pytest.fixture()
def read_only_dir(tmp_path):
    """A folder no file can be created in: chmod 555, or for root (whom permissions do not stop)
    the immutable attribute."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    root = os.geteuid() == 0
    if root and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no folder is read-only")
    if not root:
        folder.chmod(0o555)
    yield folder
    if root:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


@pytest.mark.parametrize("command", ["eval", "select"])
def test_read_only_output_folder_is_refused_before_any_work(tiny_model_dir, alpaca_file, npy_dir, read_only_dir,
                                                            monkeypatch, capsys, command):
    import mint.pipeline.steps as steps

    for name in ("eval_call", "select_call"):
        monkeypatch.setattr(steps, name, lambda *a, **k: pytest.fail("computed before checking the output folder"))
    args = {"eval": ["eval", "--data", str(alpaca_file), "--model", str(tiny_model_dir), "--device", "cpu",
                     "--output_dir", str(read_only_dir)],
            "select": _select_args(npy_dir, read_only_dir)}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"mint {command}: error: cannot write in the output folder {read_only_dir}: " in err
    assert "; make it writable (chmod u+w) or choose another --output_dir" in err
    assert list(read_only_dir.iterdir()) == []


def test_eval_writes_its_log_beside_the_metrics(tiny_model_dir, alpaca_file, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(alpaca_file), "--model", str(tiny_model_dir), "--device", "cpu",
                 "--max_length", "64", "--output_dir", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["n_examples"] == 24
    (log,) = (out / "logs").glob("eval-*.log")
    assert "mint eval" in log.read_text()
