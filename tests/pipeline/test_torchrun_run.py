"""`torchrun --nproc_per_node 2 -m mint run` (gloo, CPU, the tiny model): the same coreset files
as one process, and a complete run folder and report. Gradients, selection, training and
evaluation run on both ranks, the warm-up on rank 0 as one process, export and report on rank 0
while rank 1 waits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_alpaca_records
from mint.cli import main

pytestmark = pytest.mark.slow


def _config(tmp_path, tiny_model_dir, name):
    records = make_alpaca_records(40)
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records[:32]))
    held.write_text("".join(json.dumps(r) + "\n" for r in records[32:]))
    cfg = {
        "output_dir": str(tmp_path / name), "seed": 0, "threads": 1,
        "data": {"train": str(train), "eval": str(held), "max_length": 64},
        "model": {"name": str(tiny_model_dir), "device": "cpu"},
        "warmup": {"sample_ratio": 0.25, "epochs": 1, "lr": 1e-3},
        "grads": {"proj_dim": 32},
        "selection": {"ratios": [0.25, 0.5]},
        "train": {"ratio": 0.25, "epochs": 1, "lr": 1e-3, "batch_size": 2},
        "eval": {"generate": True, "max_new_tokens": 4, "generate_limit": 5, "batch_size": 2},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_torchrun_mint_run_gives_the_coreset_files_of_one_process(tmp_path, tiny_model_dir):
    import torch

    torch.set_num_threads(1)
    assert main(["run", "--config", str(_config(tmp_path, tiny_model_dir, "one"))]) == 0
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mint", "run", "--config",
                           str(_config(tmp_path, tiny_model_dir, "two"))], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    one, two = tmp_path / "one", tmp_path / "two"
    for rel in ("warmup/adapter/adapter_model.safetensors", "warmup/optimizer.safetensors",
                "select/coreset_0.25.npz", "select/coreset_0.50.npz", "select/coreset_0.25.jsonl",
                "select/alpha_curve.csv", "export/coreset_0.25.jsonl", "export/coreset_0.50.messages.jsonl"):
        assert (two / rel).read_bytes() == (one / rel).read_bytes(), rel
    assert json.loads((two / "grads" / "manifest.json").read_text())["info"]["world_size"] == 2
    assert json.loads((two / "train_coreset" / "manifest.json").read_text())["world_size"] == 2
    # the held-out batches spread over the ranks give the one-process numbers (the base model: same weights)
    base_one, base_two = (json.loads((d / "eval/base/metrics.json").read_text()) for d in (one, two))
    for key in ("sft_loss", "pt_loss", "sft_token_loss", "n_examples"):
        assert base_two[key] == base_one[key], key
    assert (two / "eval/base/per_example.jsonl").read_bytes() == (one / "eval/base/per_example.jsonl").read_bytes()
    summary = json.loads((two / "summary.json").read_text())
    assert set(summary["metrics"]) == {"base", "coreset", "random"} and all(s for s in summary["steps"])
    report = (two / "report.md").read_text()
    assert "| MINT coreset |" in report and "training_loss.png" in report
    assert "report:" in done.stdout and done.stdout.count("report:") == 1  # rank 0 alone prints
    # a second torchrun invocation finds every step up to date
    again = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mint", "run", "--config",
                            str(tmp_path / "two.yaml")], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert not any(s["ran"] for s in json.loads((two / "summary.json").read_text())["steps"].values())
