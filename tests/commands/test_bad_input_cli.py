"""Bad input that used to end in a traceback or a wrong message (issue 13): each one is a single
line naming the file or key and the fix, and nothing is computed or written."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mint.cli import main
from mint.model.store import FeatureStore, feature_file

FAST = ["--epochs", "1", "--lr", "1e-3", "--batch_size", "4", "--lora_r", "2", "--lora_alpha", "4",
        "--max_length", "64", "--device", "cpu", "--no_progress"]


def _error(capsys, args) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def _select(features, out):
    return ["select", "--features", str(features), "--output_dir", str(out), "--n_jobs", "1", "--no_progress"]


def test_features_folder_faults(tmp_path, capsys):
    (tmp_path / "grads.npy").write_bytes(b"")
    err = _error(capsys, _select(tmp_path / "grads.npy", tmp_path / "out"))
    assert "grads.npy is a file, not a features folder; pass the output folder of `mint grads`" in err
    folder = tmp_path / "features"
    folder.mkdir()
    for kind in ("sft", "pt", "ifl"):
        np.save(folder / f"{kind}.npy", np.ones((10, 4), np.float32))
    (folder / "pt.npy").write_bytes(b"")
    err = _error(capsys, _select(folder, tmp_path / "out"))
    assert f"{folder / 'pt.npy'} is empty (0 bytes); write the (N, D) array of its kind there again" in err
    assert not (tmp_path / "out").exists()


def _store(path, n=12, dim=8):
    """A complete feature store made from synthetic shards, as `mint grads` leaves it."""
    rng = np.random.default_rng(0)
    store = FeatureStore(path, n=n, dims=[dim], shard_size=5, settings={"model": "synthetic"})
    store.prepare()
    for k in range(store.num_shards):
        start, end = store.shard_range(k)
        store.write_shard(k, {f"{kind}_{dim}": rng.standard_normal((end - start, dim)).astype(np.float32)
                              for kind in ("sft", "pt")})
    store.merge()
    return store


def test_truncated_file_in_a_feature_store(tmp_path, capsys):
    store = _store(tmp_path / "grads")
    assert store.damage() is None
    file = feature_file(store.path, "pt", 8, True)
    file.write_bytes(file.read_bytes()[:200])
    assert store.damage() == f"{file} is truncated: its header describes 512 bytes, the file holds 200"
    err = _error(capsys, _select(store.path, tmp_path / "out"))
    assert (f"{file} is truncated: its header describes 512 bytes, the file holds 200: the feature store is "
            "damaged; run the same `mint grads` command again (it recomputes a damaged store)") in err


def test_device_is_checked_before_anything_loads(tmp_path, alpaca_file, capsys):
    for args in (["eval", "--data", str(alpaca_file), "--model.device", "tpu"],
                 ["run", "--data.train", str(alpaca_file), "--model.device", "tpu", "--output_dir", str(tmp_path / "r")]):
        err = _error(capsys, args)
        assert "config key model.device: 'tpu' is not a device; use auto, cpu, cuda, cuda:N" in err
    assert not (tmp_path / "r").exists()
    from mint.errors import MintError
    from mint.model.modeling import resolve_device

    with pytest.raises(MintError, match="device 'tpu' is not a device mint knows"):
        resolve_device("tpu")  # the library checks it too
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("text, expected", [
    ("", "run.yaml is empty; give at least `data:` with `train: FILE`"),
    ("# nothing yet\n", "run.yaml is empty; give at least `data:` with `train: FILE`"),
    ("data: file.jsonl\n", "run.yaml: `data` is a section (data.train, data.eval, data.schema, ...) but it is given "
                           "as 'file.jsonl'; write its keys under it (`data:` then `  train: ...`) or --data.train"),
    ("data:\nmodel: {name: x}\n", "run.yaml: `data` is a section (data.train, data.eval, data.schema, ...) but it "
                                  "is given as null (empty)"),
])
def test_config_file_faults(tmp_path, monkeypatch, capsys, text, expected):
    monkeypatch.chdir(tmp_path)  # an empty file once ran the demo into ./runs/demo
    (tmp_path / "run.yaml").write_text(text)
    assert expected in _error(capsys, ["run", "--config", "run.yaml"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def test_a_section_given_on_the_command_line(tmp_path, capsys):
    err = _error(capsys, ["run", "--data", "file.jsonl", "--output_dir", str(tmp_path / "r")])
    assert "the command-line overrides: `data` is a section" in err and "--data.train" in err


def test_coreset_without_weights(tiny_model_dir, alpaca_file, tmp_path, capsys):
    np.savez(tmp_path / "coreset_0.25.npz", indices=np.array([2, 9, 4]))
    train = ["train", "--model", str(tiny_model_dir), "--data", str(alpaca_file), "--coreset",
             str(tmp_path / "coreset_0.25.npz"), *FAST]
    err = _error(capsys, [*train, "--output_dir", str(tmp_path / "w")])
    assert ("coreset_0.25.npz has no 'weights' array, so --train.weighting loss has nothing to apply; add the "
            "weights, or pass --train.weighting none") in err
    assert not (tmp_path / "w").exists()
    assert main([*train, "--output_dir", str(tmp_path / "u"), "--train.weighting", "none"]) == 0
    manifest = json.loads((tmp_path / "u" / "manifest.json").read_text())
    assert manifest["config"]["weighting"] == "none" and manifest["config"]["n_train"] == 3


def test_json_error_wording(tmp_path):
    from mint.errors import MintError
    from mint.records import read_records

    for text, message in (('{"a": "b}', "Unterminated string starting at column 7"),  # json says "... at"
                          ('{"a": "b}\n', "Invalid control character at column 10")):
        (tmp_path / "d.jsonl").write_text(text)
        with pytest.raises(MintError) as e:
            read_records(tmp_path / "d.jsonl")
        assert f"d.jsonl, line 1: malformed JSON ({message}); each line must be" in str(e.value)
