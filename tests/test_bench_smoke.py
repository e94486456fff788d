"""The selection benchmarks still run: each mode of bench/selection.py on a tiny problem in a
subprocess (seconds), so a refactor that breaks a benchmark fails the suite. Their numbers are
not checked here; docs/benchmarks.md records them from full-size runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", [
    ["--n", "300", "--d", "16", "--n_jobs", "1"],
    ["--n", "300", "--d", "16", "--n_jobs", "1", "--skip_floor", "--strategy", "partitioned", "--partition_size", "100"],
    ["--partition_quality", "--n", "300", "--d", "16", "--partition_size", "100", "--n_jobs", "1"],
    ["--float16_effect", "--n", "300", "--d", "16", "--n_jobs", "1"],
    ["--exactness", "--n", "120", "--d", "16", "--n_jobs", "1"],
], ids=["timing", "partitioned", "partition_quality", "float16_effect", "exactness"])
def test_selection_benchmark_modes_run(mode, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "selection.py"), *mode], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["n"] == int(mode[mode.index("--n") + 1])


@pytest.mark.parametrize("script,extra", [
    ("train.py", ["--n", "8", "--max_length", "64", "--batch_sizes", "1", "4"]),
    ("gradients.py", ["--n", "8", "--max_length", "64", "--proj_dim", "64", "--batch_size", "4"]),
    ("projection.py", ["--smoke", "--max_length", "64", "--threads", "1"]),
    ("gradients.py", ["--n", "6", "--max_length", "32", "--proj_dim", "32", "--batch_size", "2", "--peak_memory", "3",
                      "--buffer_mb", "0"]),
    ("gradients.py", ["--n", "6", "--max_length", "32", "--proj_dim", "32", "--batch_size", "2", "--repeats", "1",
                      "--compare_with", str(REPO / "src" / "mint" / "model" / "gradients.py")]),
])
def test_model_benchmarks_run_on_the_tiny_model(script, extra, tiny_model_dir, alpaca_file, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), "--model", str(tiny_model_dir), "--data",
                             str(alpaca_file), "--work_dir", str(tmp_path / "work"), *extra], capture_output=True,
                            text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()


def test_gpu_check_says_when_there_is_no_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run bench/gpu_check.py itself")
    result = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py")], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 1 and "no CUDA device" in result.stdout
