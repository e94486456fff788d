"""`mint warmup` and `mint train` from the command line (in-process)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mint.cli import main
from mint.model.train import read_train_manifest
from mint.model.warmup import random_subset_indices, warmup_indices

FAST = ["--epochs", "1", "--lr", "1e-3", "--batch_size", "4", "--lora_r", "2", "--lora_alpha", "4",
        "--max_length", "64", "--device", "cpu", "--no_progress"]


def test_warmup_and_train_commands(tiny_model_dir, alpaca_file, tmp_path, capsys):
    model = ["--model", str(tiny_model_dir), "--data", str(alpaca_file)]
    assert main(["warmup", *model, "--output_dir", str(tmp_path / "wu"), "--sample_ratio", "0.25", *FAST]) == 0
    assert "mint warmup: 6 of 24 examples" in capsys.readouterr().out
    np.savez(tmp_path / "coreset_0.25.npz", indices=np.array([2, 9, 4]), weights=np.array([1.0, 3.0, 2.0]))
    assert main(["train", *model, "--output_dir", str(tmp_path / "c"), "--coreset",
                 str(tmp_path / "coreset_0.25.npz"), *FAST]) == 0
    m = read_train_manifest(tmp_path / "c")
    assert m["config"]["n_train"] == 3 and m["config"]["weighting"] == "loss"
    assert np.load(tmp_path / "c" / "indices.npy").tolist() == [2, 9, 4]
    assert main(["train", *model, "--output_dir", str(tmp_path / "r"), "--random", "0.5", *FAST]) == 0
    m = read_train_manifest(tmp_path / "r")
    assert m["config"]["n_train"] == 12 and m["config"]["weighting"] == "none"
    # the random subset has a seed stream of its own: not the warm-up sample of the same ratio and seed
    random_idx = np.load(tmp_path / "r" / "indices.npy")
    assert np.array_equal(random_idx, random_subset_indices(24, 0.5, seed=0))
    assert not np.array_equal(random_idx, warmup_indices(24, 0.5, seed=0))
    assert main(["train", *model, "--output_dir", str(tmp_path / "f"), *FAST]) == 0
    assert read_train_manifest(tmp_path / "f")["config"]["n_train"] == 24


@pytest.mark.parametrize("case", ["range", "n", "sha"])
def test_train_refuses_foreign_coreset(tiny_model_dir, alpaca_file, tmp_path, capsys, case):
    sel = tmp_path / "select"
    sel.mkdir()
    np.savez(sel / "coreset_0.10.npz", indices=np.array([1, 30 if case == "range" else 3]), weights=np.array([1.0, 1.0]))
    if case == "n":
        (sel / "summary.json").write_text(json.dumps({"n": 50}))
    if case == "sha":
        (sel / "summary.json").write_text(json.dumps({"n": 24, "data": {"sha256": "0" * 64}}))
    rc = main(["train", "--model", str(tiny_model_dir), "--data", str(alpaca_file), "--output_dir",
               str(tmp_path / "c"), "--coreset", str(sel / "coreset_0.10.npz"), *FAST])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "c").exists()
    expected = {"range": "index 30 is outside the data set of 24 records",
                "n": "selected from 50 records", "sha": "different data file"}[case]
    assert expected in err


def test_train_refuses_bad_random_ratio(tiny_model_dir, alpaca_file, tmp_path, capsys):
    rc = main(["train", "--model", str(tiny_model_dir), "--data", str(alpaca_file), "--output_dir",
               str(tmp_path / "r"), "--random", "1.5", *FAST])
    assert rc == 2 and "--random takes a fraction in (0, 1], got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_help_lists_the_options(capsys):
    for cmd in ("warmup", "train"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "--output_dir" in capsys.readouterr().out
