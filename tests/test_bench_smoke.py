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
    ["--vs_plain", "--n", "200", "--d", "16", "--n_jobs", "1"],
    ["--golden", "--golden_max_n", "600", "--engine", "numba"],
], ids=["timing", "partitioned", "partition_quality", "float16_effect", "exactness", "vs_plain", "golden"])
def test_selection_benchmark_modes_run(mode, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "selection.py"), *mode], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["n"] == int(mode[mode.index("--n") + 1] if "--n" in mode else 600)


@pytest.mark.parametrize("script,extra", [
    ("train.py", ["--n", "8", "--max_length", "64", "--batch_sizes", "1", "4"]),
    ("train.py", ["--memory", "--memory_length", "64", "--memory_steps", "1"]),
    ("gradients.py", ["--n", "8", "--max_length", "64", "--proj_dim", "64", "--batch_size", "4"]),
    ("projection.py", ["--smoke", "--max_length", "64", "--threads", "1"]),
    ("gradients.py", ["--n", "6", "--max_length", "32", "--proj_dim", "32", "--batch_size", "2", "--peak_memory", "3",
                      "--buffer_mb", "0"]),
    ("gradients.py", ["--n", "6", "--max_length", "32", "--proj_dim", "32", "--batch_size", "2", "--repeats", "1",
                      "--compare_with", str(REPO / "src" / "mint" / "model" / "gradients.py")]),
    ("gradients.py", ["--head_memory", "--max_length", "32", "--batch_size", "2", "--threads", "1"]),
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


def test_omp_wait_policy_benchmark_runs_on_the_tiny_model(tiny_model_dir, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "omp_wait_policy.py"), "--model", str(tiny_model_dir),
                             "--threads", "1", "--repeats", "1"], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "forward+backward 8x64 wall" in result.stdout


def test_submodlib_comparison_runs_or_names_the_missing_package(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "submodlib_compare.py"), "--n", "200", "--d", "8"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    if result.returncode == 2:  # submodlib is not a dependency of mint
        assert "pip install submodlib-py" in out["submodlib"] and out["mint_seconds"] >= 0
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        assert {r["optimizer"] for r in out["rows"]} >= {"mint lazy_greedy (exact)", "submodlib LazyGreedy"}


# six quality.py processes in a row (each imports torch and transformers): well inside the
# suite-wide 240 s on an idle 2-core machine, over it when benchmarks share the cores
@pytest.mark.timeout(900)
def test_quality_benchmark_smoke_mode(tiny_model_dir, tmp_path):
    """Every stage of the evidence benchmark on the tiny model: a sitting that trains two arms
    (`--arms`), then every other arm, the table, the plot, and a third call that computes nothing
    (everything resumes from the stored runs)."""
    tasks = ["sum", "reverse", "capital", "count"]
    with open(tmp_path / "pool.jsonl", "w", encoding="utf-8") as f:
        for i in range(40):
            t = tasks[0] if i % 2 else tasks[(i // 2) % 4]  # skewed: half the pool is one task
            f.write(json.dumps({"instruction": f"{t} {i}", "input": f"x{i % 7}", "output": f"{t} {i % 5}",
                                "task": t}) + "\n")
    with open(tmp_path / "dev.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(tasks * 3):
            f.write(json.dumps({"instruction": f"{t} {i}", "input": "", "output": f"{t} {i % 5}", "task": t}) + "\n")
    cmd = [sys.executable, str(REPO / "bench" / "quality.py"), "--smoke", "--model", str(tiny_model_dir), "--pool",
           str(tmp_path / "pool.jsonl"), "--dev", str(tmp_path / "dev.jsonl"), "--work_dir", str(tmp_path / "work"),
           "--results_dir", str(tmp_path / "results"), "--threads", "1"]
    typo = subprocess.run(cmd + ["--arms", "randm", "pt@0.3", "pt"], capture_output=True, text=True, timeout=200,
                          cwd=tmp_path)  # a label, a ratio the arm does not have
    assert typo.returncode != 0 and "no arm is named pt@0.3, randm;" in typo.stderr and "mint/plateau" in typo.stderr
    some = subprocess.run(cmd + ["--arms", "random", "pt@0.1"], capture_output=True, text=True, timeout=200,
                          cwd=tmp_path)  # random at every ratio, pt at one
    assert some.returncode == 0, some.stderr[-3000:]
    res = json.loads((tmp_path / "results" / "ni_mix-smoke" / "result.json").read_text())
    assert 0 < res["runs_done"] < res["runs_total"]
    first_settings = res["settings"]
    assert "arms" not in first_settings and res["written_by"].endswith("--arms random pt@0.1")
    assert all(m.split("@")[0] != "random" for m in res["missing"]) and "craig@0.1 seed 0" in res["missing"]
    assert "pt@0.2 seed 0" in res["missing"] and "pt@0.1 seed 0" not in res["missing"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads((tmp_path / "results" / "ni_mix-smoke" / "result.json").read_text())
    rows = res["analysis"]["rows"]
    assert res["runs_done"] == res["runs_total"] and not res["missing"]
    assert res["settings"] == first_settings and "--arms" not in res["written_by"]  # a sitting's own options apart
    for arm in ("random", "mint/plateau", "mint/golden", "craig", "craig/unweighted", "pt", "ifl", "stratified"):
        for ratio in (0.1, 0.2):
            assert f"{arm}@{ratio}" in rows, (arm, ratio)
    assert rows["random@0.1"]["delta_mean"]["value"] == 0.0 and len(rows["random@0.1"]["random_seed_means"]) == 2
    assert rows["mint/plateau@0.2"]["runs"] == 2 and "full@1.0" in rows and "gap_closed" in rows["pt@0.1"]
    assert (tmp_path / "results" / "ni_mix-smoke" / "loss_vs_ratio.png").stat().st_size > 0
    r2 = rows["pt@0.1"]  # the rank among single random draws, counted from the stored seed means
    assert r2["random_draws"] == 2 and r2["beats_random_draws"] == sum(
        m > r2["sft_loss"] for m in rows["random@0.1"]["random_seed_means"])
    bins = res["analysis"]["length_bins"]  # the breakdown by held-out answer length
    assert sum(b["records"] for b in bins) == res["analysis"]["n_dev"] and len(rows["pt@0.1"]["delta_by_length"]) == len(bins)
    assert all(x["value"] == 0.0 for x in rows["random@0.1"]["delta_by_length"])
    t_random, t_craig = rows["random@0.1"]["subset_answer_tokens"], rows["craig/unweighted@0.1"]["subset_answer_tokens"]
    assert t_random["mean"] == t_random["as_trained"] > 0 and t_craig["mean"] == t_craig["as_trained"]  # unweighted
    assert rows["craig@0.1"]["subset_answer_tokens"]["mean"] == t_craig["mean"]  # the same subset, its weights apart
    from mint.model.data import load_examples, tokenize_examples  # the weighted length against a plain loop
    from mint.model.modeling import load_tokenizer

    tok = tokenize_examples(load_examples(tmp_path / "pool.jsonl"), load_tokenizer(tiny_model_dir), max_length=96,
                            long_prompts="truncate")
    craig = next(x for x in json.loads((tmp_path / "results" / "ni_mix-smoke" / "selections.json").read_text())["subsets"]
                 if x["label"] == "craig" and x["ratio"] == 0.1)
    assert len(set(craig["weights"])) > 1  # else weighted and unweighted means could not differ
    num = den = 0.0
    for i, w in zip(craig["indices"], craig["weights"]):
        num, den = num + w * len(tok[i].response_ids), den + w
    assert abs(rows["craig@0.1"]["subset_answer_tokens"]["as_trained"] - num / den) < 1e-9
    assert "By held-out answer length" in (tmp_path / "results" / "ni_mix-smoke" / "table.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "training LoRA" not in again.stderr  # nothing trained twice
    # a stale training folder (no manifest, not empty): the error names the folder to delete, not an option
    run_file = next(f for f in (tmp_path / "results" / "ni_mix-smoke" / "runs").glob("*.json")
                    if f.name != "base.json" and json.loads(f.read_text())["label"] == "pt")
    folder = next((tmp_path / "work").glob(f"*/train/{json.loads(run_file.read_text())['train_key']}"))
    (folder / "manifest.json").unlink()
    run_file.unlink()
    stale = subprocess.run(cmd + ["--arms", "pt"], capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert stale.returncode != 0 and f"delete {folder}" in stale.stderr, stale.stderr[-2000:]
    assert "Traceback" not in stale.stderr and "quality.py: error:" in stale.stderr


def test_length_probe_smoke_mode(tiny_model_dir, tmp_path):
    """The answer-length probe on the tiny model: a warm-up, features of 5 records per third,
    the statistics and the two selections, written with their provenance."""
    with open(tmp_path / "pool.jsonl", "w", encoding="utf-8") as f:
        for i in range(30):
            f.write(json.dumps({"instruction": f"say {i}", "input": "", "output": " ".join(["word"] * (1 + i % 10)),
                                "task": f"t{i % 3}"}) + "\n")
    cmd = [sys.executable, str(REPO / "bench" / "length_probe.py"), "--smoke", "--model", str(tiny_model_dir),
           "--pool", str(tmp_path / "pool.jsonl"), "--work_dir", str(tmp_path / "work"), "--results_dir",
           str(tmp_path / "results"), "--threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    res = json.loads((tmp_path / "results" / f"{tmp_path.name}-smoke.json").read_text())
    assert sum(res["third_sizes"]) == 30 and res["per_third"] == 5
    lengths = res["mean_answer_tokens"]
    assert lengths[0] < lengths[1] < lengths[2]  # the thirds are ordered by answer length
    for view in ("sft", "pt", "ifl"):
        for s in res["views"][view]["thirds"]:
            assert s["records"] == 5 and -1 <= s["within_cos"] <= 1 and 0 <= s["nn_distance"] <= 2
    for sel in res["selections"].values():
        assert sum(sel["picks"]) == sel["k"] == 3 and sum(sel["weights"]) == 15  # weights = cluster sizes
    assert "within-third cosine" in result.stdout
    too_many = subprocess.run(cmd + ["--per_third", "50"], capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert too_many.returncode != 0 and "lower it" in too_many.stderr
