"""mint.model.train: what a killed warm-up or training leaves beside its output is removed on the
next run, and an output folder holding the lock and logs of its command is filled in place."""
from __future__ import annotations

import logging
import subprocess
import sys

from mint._folders import FolderLock
from mint.model.modeling import LoraSettings
from mint.model.train import read_train_manifest, train_lora

FAST = dict(epochs=1, lr=1e-3, batch_size=4, lora=LoraSettings(r=2, alpha=4, dropout=0.0), max_length=64,
            device="cpu", progress=False)


def test_temporary_folders_of_a_killed_run_are_removed(tiny_model_dir, alpaca_file, tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    # as a kill -9 leaves them: the temporary output (this version's name and an older one's), an old output
    left = [f".run.{dead}-q1w2e3r4.tmp", ".run.a1b2c3d4.tmp", f".run.old-{dead}"]
    for name in left:
        (tmp_path / name / "adapter").mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="mint._folders"):
        out = train_lora(tiny_model_dir, alpaca_file, tmp_path / "run", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "run"]
    assert all(f"removing {tmp_path / name}, left by an interrupted run" in caplog.text for name in left)
    assert read_train_manifest(out)["config"]["n_train"] == 24


def test_an_output_folder_with_its_lock_and_logs_is_filled_in_place(tiny_model_dir, alpaca_file, tmp_path):
    out = tmp_path / "run"
    with FolderLock(out, "train"):
        (out / "logs").mkdir()
        (out / "logs" / "train-1.log").write_text("the command's log")
        inode = (out / ".mint.lock").stat().st_ino
        train_lora(tiny_model_dir, alpaca_file, out, **FAST)  # a folder of bookkeeping only counts as empty
        train_lora(tiny_model_dir, alpaca_file, out, overwrite=True, **{**FAST, "lr": 5e-4})  # replaced in place
        assert read_train_manifest(out)["config"]["lr"] == 5e-4
        assert (out / ".mint.lock").stat().st_ino == inode
        assert (out / "logs" / "train-1.log").read_text() == "the command's log"
    assert sorted(p.name for p in out.iterdir()) == [".mint.lock", "adapter", "indices.npy", "logs", "manifest.json",
                                                     "optimizer.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "run"]
