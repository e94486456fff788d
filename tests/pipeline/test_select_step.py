"""`mint select` end to end on small synthetic features: outputs, byte-for-byte
reproducibility, the feature store and plain .npy inputs, and refusing to mix runs."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mint._io import sha256_file
from mint.cli import main
from mint.pipeline.export import read_export

N = 80


def _features(seed=0, n=N, d=12):
    rng = np.random.default_rng(seed)
    out = {}
    for i, kind in enumerate(("sft", "pt", "ifl")):
        c = rng.normal(size=(3 + i, d))
        out[kind] = (c[rng.integers(0, len(c), n)] + 0.6 * rng.normal(size=(n, d))).astype(np.float32)
    return out


@pytest.fixture
def npy_dir(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    for kind, X in _features().items():
        np.save(folder / f"{kind}.npy", X)  # not normalised: the loader normalises rows
    return folder


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "pool.jsonl"
    with open(path, "w") as f:
        for i in range(N):
            f.write(json.dumps({"instruction": f"task {i}", "input": "", "output": f"answer {i}"}) + "\n")
    return path


def _select(features, out, *extra):
    return main(["select", "--features", str(features), "--output_dir", str(out), "--n_jobs", "1",
                 "--no_progress", "--ratios", "0.05", "0.1", *map(str, extra)])


def test_golden_alpha_rule_end_to_end(npy_dir, tmp_path):
    """BRIEF's golden search: its evaluated alphas make the curve; the plots are written too."""
    out = tmp_path / "out"
    assert _select(npy_dir, out, "--alpha_method", "golden") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["alpha_method"] == "golden" and 0 < summary["alpha"] < 1
    rows = list(csv.DictReader(open(out / "alpha_curve.csv")))
    assert 2 < len(rows) < 174 and sum(int(r["chosen"]) for r in rows) == 1
    assert (out / "plateau.png").read_bytes()[:4] == b"\x89PNG"


def test_end_to_end_outputs(npy_dir, data_file, tmp_path):
    out = tmp_path / "out"
    assert _select(npy_dir, out, "--data", data_file) == 0  # the default rule: plateau
    names = {p.name for p in out.iterdir()}
    assert {"coreset_0.05.npz", "coreset_0.10.npz", "coreset_0.05.jsonl", "coreset_0.10.jsonl", "alpha_curve.csv",
            "pareto.png", "plateau.png", "summary.json", "summary.txt", "selection.npz", "run.json"} <= names
    small, big = np.load(out / "coreset_0.05.npz"), np.load(out / "coreset_0.10.npz")
    assert set(small.files) == {"indices", "weights", "n", "data_sha256"}
    assert int(small["n"]) == N and str(small["data_sha256"]) == sha256_file(data_file)  # provenance
    np.testing.assert_array_equal(small["indices"], big["indices"][:4])
    assert small["weights"].sum() == N and big["weights"].sum() == N
    records, source, weights = read_export(out / "coreset_0.10.jsonl")
    np.testing.assert_array_equal(source, big["indices"])
    np.testing.assert_array_equal(weights, big["weights"])
    assert records[0]["instruction"] == f"task {big['indices'][0]}"
    rows = list(csv.DictReader(open(out / "alpha_curve.csv")))
    assert len(rows) == 174 and sum(int(r["chosen"]) for r in rows) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == N and summary["method"] == "mint" and 0 < summary["alpha"] < 1
    assert summary["alpha_method"] == "plateau"
    assert [s["k"] for s in summary["subsets"]] == [4, 8]
    assert summary["subsets"][0]["e_pt"] > summary["subsets"][1]["e_pt"]
    assert summary["data"]["records"] == N and set(summary["inputs"]["sha256"]) == {"sft", "pt", "ifl"}
    assert "numpy" in summary["versions"] and "timings" in summary
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_bytes_and_rerun(npy_dir, data_file, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _select(npy_dir, a, "--data", data_file) == 0
    assert _select(npy_dir, b, "--data", data_file) == 0
    from mint._folders import own_entries  # the outputs: the lock file and logs/ (times) aside

    assert [p.name for p in own_entries(a)] == [p.name for p in own_entries(b)]
    for p in own_entries(a):
        if p.name == "summary.json":
            sa, sb = (json.loads(x.read_text()) for x in (p, b / p.name))
            sa.pop("timings"), sb.pop("timings")  # wall-clock times are the only difference
            assert sa == sb
        else:
            assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    # the same run again into the same folder is fine (and gives the same bytes)
    before = (a / "coreset_0.10.npz").read_bytes()
    assert _select(npy_dir, a, "--data", data_file) == 0
    assert (a / "coreset_0.10.npz").read_bytes() == before


def test_refuses_to_mix_runs(npy_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _select(npy_dir, out) == 0
    assert _select(npy_dir, out, "--seed", "1") == 2
    assert "--overwrite" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert main(["select", "--features", str(npy_dir), "--output_dir", str(out), "--n_jobs", "1", "--no_progress",
                 "--ratios", "0.2", "--alpha", "0.9", "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "coreset_0.05.npz" not in names and "coreset_0.20.npz" in names
    assert "alpha_curve.csv" not in names  # manual alpha: no curve, and the old one is gone
    assert (out / "notes.txt").read_text() == "mine"  # files that are not ours stay


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--alpha", "0"], "config key selection.alpha: 0.0 is outside (0, 1)"),
        (["--coef", "0", "0", "0"], "all 0"),
        (["--ratios", "1.5"], "outside (0, 1]"),
    ],
)
def test_bad_options_are_errors(npy_dir, tmp_path, capsys, extra, message):
    assert _select(npy_dir, tmp_path / "o", *extra) == 2
    assert message in capsys.readouterr().err


def test_data_count_mismatch_and_missing_features(npy_dir, tmp_path, capsys):
    short = tmp_path / "short.jsonl"
    short.write_text("".join(json.dumps({"instruction": "x", "output": "y"}) + "\n" for _ in range(N - 1)))
    assert _select(npy_dir, tmp_path / "o1", "--data", short) == 2
    assert f"has {N - 1} records but the features" in capsys.readouterr().err
    assert _select(tmp_path / "nowhere", tmp_path / "o2") == 2
    assert "features folder not found" in capsys.readouterr().err
    (npy_dir / "sft.npy").unlink()
    assert _select(npy_dir, tmp_path / "o3", "--method", "craig") == 2
    assert "needs feature kind(s) ['sft']" in capsys.readouterr().err


def test_reads_the_gradient_feature_store(tmp_path):
    from mint.model.store import FeatureStore

    feats = _features(seed=2)
    store = FeatureStore(tmp_path / "store", n=N, dims=[12], shard_size=32, settings={"seed": 0})
    store.prepare()
    for k in range(store.num_shards):
        s, e = store.shard_range(k)
        store.write_shard(k, {"sft_12": feats["sft"][s:e], "pt_12": feats["pt"][s:e]})
    store.merge()
    out = tmp_path / "out"
    assert _select(tmp_path / "store", out, "--alpha", "0.5") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["source"] == "feature store" and summary["alpha"] == 0.5


def test_data_must_be_the_file_the_store_was_made_from(tmp_path, data_file, capsys):
    from mint._io import sha256_file
    from mint.model.store import FeatureStore

    feats = _features(seed=3)
    for name, digest in (("good", sha256_file(data_file)), ("other", "0" * 64)):
        store = FeatureStore(tmp_path / name, n=N, dims=[12], shard_size=N, settings={"data_sha256": digest})
        store.prepare()
        store.write_shard(0, {"sft_12": feats["sft"], "pt_12": feats["pt"]})
        store.merge()
    assert _select(tmp_path / "good", tmp_path / "o1", "--alpha", "0.5", "--data", data_file) == 0
    assert _select(tmp_path / "other", tmp_path / "o2", "--alpha", "0.5", "--data", data_file) == 2
    assert "not the file the features" in capsys.readouterr().err


def test_partitioned_selection_resumes_at_the_part_where_it_stopped(npy_dir, tmp_path, monkeypatch):
    import mint.selection.partition as partition
    from mint.pipeline.select_step import run_selection

    kw = dict(ratios=[0.1, 0.2], alpha=0.8, strategy="partitioned", partition_size=20, n_jobs=1, progress=False)
    whole = run_selection(npy_dir, tmp_path / "whole", **kw)
    assert whole.settings["distance_strategy"] == "partitioned (4 parts)"
    real, calls = partition._select_part, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(partition, "_select_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_selection(npy_dir, tmp_path / "again", **kw)
    assert len(list((tmp_path / "again" / "parts").glob("part_*.npz"))) == 2  # the finished parts are kept
    calls.clear()
    monkeypatch.setattr(partition, "_select_part", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_selection(npy_dir, tmp_path / "again", **kw)
    assert len(calls) == 2  # only the two parts that had not finished
    assert not (tmp_path / "again" / "parts").exists()
    for r in (0.1, 0.2):
        a, b = (tmp_path / "whole" / f"coreset_{r:.2f}.npz"), (tmp_path / "again" / f"coreset_{r:.2f}.npz")
        assert a.read_bytes() == b.read_bytes()
    assert again.order.tobytes() == whole.order.tobytes()


def test_second_round_from_the_command_line_is_recorded_in_the_run_key(npy_dir, tmp_path):
    import json

    assert _select(npy_dir, tmp_path / "one", "--alpha", "0.8", "--strategy", "partitioned", "--partition_size",
                   "20") == 0
    assert _select(npy_dir, tmp_path / "two", "--alpha", "0.8", "--strategy", "partitioned", "--partition_size",
                   "20", "--second_round") == 0
    one, two = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert one["distance_strategy"] == "partitioned (4 parts)"
    assert two["distance_strategy"] == "partitioned (4 parts, GreeDi second round)"
    runs = {d: json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two")}
    assert "second_round" not in runs["one"]["settings"] and runs["two"]["settings"]["second_round"] is True
    assert runs["one"]["run_key"] != runs["two"]["run_key"]


@pytest.mark.slow
@pytest.mark.parametrize("greedi", [False, True], ids=["parts", "second_round"])
def test_two_rank_torchrun_partitioned_selection_equals_one_process(npy_dir, tmp_path, greedi):
    """Under torchrun the parts are spread over the ranks (shared through select/parts/), the
    second round runs in one rank only, and rank 0 writes the outputs: the same bytes as one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    common = ["select", "--features", str(npy_dir), "--ratios", "0.1", "0.2", "--alpha", "0.8", "--strategy",
              "partitioned", "--partition_size", "20", "--n_jobs", "1", "--no_progress",
              *(["--second_round"] if greedi else [])]
    assert main([*common, "--output_dir", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "mint.cli", *common,
                             "--output_dir", str(tmp_path / "two")], env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    for r in (0.1, 0.2):
        name = f"coreset_{r:.2f}.npz"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert (tmp_path / "one" / "selection.npz").read_bytes() == (tmp_path / "two" / "selection.npz").read_bytes()
    assert not (tmp_path / "two" / "parts").exists()
    assert result.stdout.count("outputs in") == 1  # only rank 0 reports
    assert result.stderr.count("computing 2 of the 4 parts in this process") == 2  # the ranks split the parts
    # the second round's N x |U| matrix is built by one rank; the other reads its result
    assert result.stderr.count("second round: similarities") == (1 if greedi else 0)
    assert result.stderr.count("second round: computed by another process") == (1 if greedi else 0)
