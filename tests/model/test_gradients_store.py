"""End to end `mint.model.features.compute_features` on the tiny model: store contents, resume
after a kill, 2-process torchrun, manifest checks, the model dtype, the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mint
from mint.errors import MintError
from mint.model.features import compute_features

from conftest import REPO
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def sgd_warmup_dir(tiny_model_dir, tmp_path_factory):
    """A warm-up folder holding only an adapter (enough for grad_type sgd/sign). Its B
    matrices are random so that every LoRA weight has a non-zero gradient."""
    from mint.model.modeling import LoraSettings, add_lora, load_model_and_tokenizer

    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    model = add_lora(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp("warmup_sgd")
    model.save_pretrained(folder / "adapter")
    return folder


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    from conftest import make_alpaca_records

    path = tmp_path_factory.mktemp("gdata") / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(14)))
    return path


def _run(tiny_model_dir, data_file, warmup, out, **kw):
    opts = dict(proj_dim=[16, 64], grad_type="sgd", batch_size=3, max_length=64, seed=5, shard_size=4,
                device="cpu", progress=False)
    return compute_features(tiny_model_dir, data_file, warmup, out, **(opts | kw))


def _cli_args(tiny_model_dir, data_file, warmup, out):
    return ["grads", "--data", str(data_file), "--model", str(tiny_model_dir), "--warmup_dir", str(warmup),
            "--output_dir", str(out), "--proj_dim", "16", "64", "--grad_type", "sgd", "--batch_size", "3",
            "--max_length", "64", "--seed", "5", "--shard_size", "4", "--device", "cpu", "--no_progress"]


def _feature_bytes(folder: Path) -> dict[str, bytes]:
    files = sorted((folder / "features").glob("*.npy"))
    assert len(files) == 12  # 3 kinds x 2 dims x raw/normalised
    return {f.name: f.read_bytes() for f in files}


@pytest.fixture(scope="module")
def reference_store(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ref") / "features"
    _run(tiny_model_dir, data_file, sgd_warmup_dir, out)
    return out


def test_store_contents_match_direct_gradients(reference_store, tiny_model_dir, data_file, sgd_warmup_dir, tmp_path):
    feats = mint.load_features(reference_store, dim=64, normalized=False)
    assert {k: v.shape for k, v in feats.items()} == {"sft": (14, 64), "pt": (14, 64), "ifl": (14, 64)}
    np.testing.assert_array_equal(feats["ifl"], feats["sft"] - feats["pt"])
    norm = mint.load_features(reference_store)  # the largest dim, normalised
    np.testing.assert_allclose(np.linalg.norm(norm["ifl"], axis=1), 1.0, rtol=1e-5)
    small = mint.load_features(reference_store, dim=16, normalized=False)
    np.testing.assert_allclose(small["sft"], feats["sft"][:, :16] * np.sqrt(64 / 16), rtol=1e-4, atol=1e-6)
    # raw (unprojected) features, projected here with the dense matrix, give the same rows
    from mint.model.projection import dense_matrix

    raw = _run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "raw", proj_dim=None, batch_size=14,
               shard_size=14)
    raw = mint.load_features(raw, normalized=False)
    dense = dense_matrix(raw["sft"].shape[1], 64, seed=5).astype(np.float64)
    np.testing.assert_allclose(raw["pt"] @ dense / 8.0, feats["pt"], rtol=1e-3, atol=1e-5)
    manifest = mint.model.store.read_manifest(reference_store)
    assert manifest["complete"] and manifest["settings"]["grad_type"] == "sgd" and manifest["n"] == 14


def test_rerun_is_noop_and_other_settings_refused(reference_store, tiny_model_dir, data_file, sgd_warmup_dir):
    before = _feature_bytes(reference_store)
    _run(tiny_model_dir, data_file, sgd_warmup_dir, reference_store)
    assert _feature_bytes(reference_store) == before
    with pytest.raises(MintError, match="seed"):
        _run(tiny_model_dir, data_file, sgd_warmup_dir, reference_store, seed=6)
    fp = mint.model.store.read_manifest(reference_store)["settings"]["data_fingerprint"]
    with pytest.raises(MintError, match="data_fingerprint"):
        mint.load_features(reference_store, expect={"data_fingerprint": fp[::-1]})


@pytest.fixture(scope="module")
def adam_warmup_dir(tiny_model_dir, data_file, tmp_path_factory):
    """A real warm-up (mint.model.warmup) whose saved betas/eps are then changed to non-default
    values, so the test can tell whether the saved ones are used."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mint.model.warmup import run_warmup

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("warm") / "warmup"
    run_warmup(tiny_model_dir, data_file, out, sample_ratio=0.5, epochs=1, batch_size=4, lr=1e-2,
               max_length=64, device="cpu", progress=False)
    file = out / "optimizer.safetensors"
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
    hyper = json.loads(meta["mint_adamw"]) | {"betas": [0.8, 0.95], "eps": 0.001}
    save_file(load_file(str(file)), str(file), metadata=meta | {"mint_adamw": json.dumps(hyper)})
    return out


def test_adam_features_use_saved_state(adam_warmup_dir, tiny_model_dir, data_file, tmp_path):
    from mint.model.modeling import lora_named_parameters, load_lora, load_model_and_tokenizer
    from mint.model.warmup import load_warmup_state

    adam = _run(tiny_model_dir, data_file, adam_warmup_dir, tmp_path / "adam", grad_type="adam", proj_dim=None)
    sgd = _run(tiny_model_dir, data_file, adam_warmup_dir, tmp_path / "sgd", grad_type="sgd", proj_dim=None)
    adam, sgd = mint.load_features(adam, normalized=False), mint.load_features(sgd, normalized=False)
    state = load_warmup_state(adam_warmup_dir)
    assert state["betas"] == (0.8, 0.95) and state["eps"] == 1e-3
    model, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    keys = [k for k, _ in lora_named_parameters(load_lora(model, state["adapter_dir"], trainable=True))]
    m = torch.cat([state["exp_avg"][k].flatten() for k in keys]).double()
    v = torch.cat([state["exp_avg_sq"][k].flatten() for k in keys]).double()
    assert v.abs().sum() > 0
    for kind in ("sft", "pt"):
        g = torch.from_numpy(np.array(sgd[kind])).double()
        m2, v2 = 0.8 * m + 0.2 * g, 0.95 * v + 0.05 * g * g
        expected = m2 / (v2.sqrt() + 1e-3)
        np.testing.assert_allclose(adam[kind], expected.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(adam["ifl"], adam["sft"] - adam["pt"])
    assert mint.model.store.read_manifest(tmp_path / "adam")["settings"]["optimizer"]["betas"] == [0.8, 0.95]


def test_adam_needs_optimizer_state(adam_warmup_dir, tiny_model_dir, data_file, sgd_warmup_dir, tmp_path,
                                    monkeypatch):
    import shutil

    from mint.model import modeling

    broken = tmp_path / "warm"
    shutil.copytree(adam_warmup_dir, broken)
    (broken / "optimizer.safetensors").unlink()
    with monkeypatch.context() as m:  # the warm-up folder is refused before the model is loaded
        m.setattr(modeling, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("model loaded"))
        with pytest.raises(MintError, match="no optimizer state"):
            _run(tiny_model_dir, data_file, broken, tmp_path / "x", grad_type="adam")
        with pytest.raises(MintError, match="not a finished warm-up"):
            _run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "y", grad_type="adam")
    with pytest.raises(MintError, match="no LoRA adapter"):
        _run(tiny_model_dir, data_file, tmp_path, tmp_path / "z")
    assert not (tmp_path / "x").exists()  # nothing written before the inputs are checked


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))


# `mint grads` (arguments from the command line) in a process that SIGKILLs itself right after
# shard {k} is written: no clean-up runs, as when a job is killed.
_KILLED_AFTER_SHARD = """
import os, signal, sys

from mint.model.store import FeatureStore

write_shard = FeatureStore.write_shard


def write_then_die(self, k, rows):
    write_shard(self, k, rows)
    if k == {k}:
        os.kill(os.getpid(), signal.SIGKILL)


FeatureStore.write_shard = write_then_die
from mint.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_resume_after_kill_is_byte_identical(reference_store, tiny_model_dir, data_file, sgd_warmup_dir, tmp_path):
    out = tmp_path / "features"
    cli_args = _cli_args(tiny_model_dir, data_file, sgd_warmup_dir, out)
    killed = [sys.executable, "-c", _KILLED_AFTER_SHARD.format(k=1)] + cli_args
    crashed = subprocess.run(killed, env=_env(), capture_output=True, text=True)
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # SIGKILL: no clean-up ran
    done = sorted(p.name for p in (out / "shards").glob("*.done"))
    assert done == ["shard_00000.done", "shard_00001.done"]
    assert not mint.model.store.read_manifest(out)["complete"]
    with pytest.raises(MintError, match="incomplete"):
        mint.load_features(out)
    finished = subprocess.run([sys.executable, "-m", "mint.cli"] + cli_args, env=_env(), capture_output=True,
                              text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "resuming, 2 of 4 shards already done" in finished.stderr
    assert "mint grads: 14 examples" in finished.stdout
    assert _feature_bytes(out) == _feature_bytes(reference_store)


@pytest.mark.slow
def test_two_process_torchrun_equals_one_process(reference_store, tiny_model_dir, data_file, sgd_warmup_dir, tmp_path):
    out = tmp_path / "features"
    args = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "mint.cli"]
    result = subprocess.run(args + _cli_args(tiny_model_dir, data_file, sgd_warmup_dir, out), env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert mint.model.store.read_manifest(out)["info"]["world_size"] == 2
    assert _feature_bytes(out) == _feature_bytes(reference_store)


def test_nan_gradient_names_record_and_keeps_store(tiny_model_dir, sgd_warmup_dir, tmp_path):
    """A base model whose embedding of one token is NaN: only the record holding that token
    gets NaN gradients. The run stops naming it; the shards before it stay complete."""
    import shutil

    from conftest import make_alpaca_records
    from transformers import AutoModelForCausalLM, AutoTokenizer

    records = make_alpaca_records(14)
    records[9]["output"] = "the answer is ~"
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    bad_ids = tok("~", add_special_tokens=False)["input_ids"]
    assert all(i not in tok(json.dumps(r), add_special_tokens=False)["input_ids"]
               for k, r in enumerate(records) if k != 9 for i in bad_ids)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight[bad_ids] = float("nan")
    model.save_pretrained(model_dir)
    out = tmp_path / "features"
    with pytest.raises(MintError, match=r"record\(s\) \[9\]"):
        _run(model_dir, data, sgd_warmup_dir, out)
    assert not mint.model.store.read_manifest(out)["complete"]
    assert sorted(p.name for p in (out / "shards").glob("*.done")) == ["shard_00000.done", "shard_00001.done"]
    with pytest.raises(MintError, match="incomplete"):
        mint.load_features(out)


def test_cli_grads_and_bad_arguments(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path, capsys):
    from mint.cli import main

    out = tmp_path / "features"
    assert main(_cli_args(tiny_model_dir, data_file, sgd_warmup_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "mint grads: 14 examples" in printed and "dims 16, 64" in printed
    assert mint.load_features(out, dim=16)["ifl"].shape == (14, 16)
    bad = _cli_args(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "other")
    bad[bad.index("--proj_dim") + 1] = "none"
    assert main(bad) == 2  # 'none' mixed with numbers
    assert "cannot be combined" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grads", "--data", str(data_file), "--model", "m", "--warmup_dir", "w", "--output_dir", "o",
              "--proj_dim", "abc"])
    assert main(["grads", "--data", str(tmp_path / "missing.jsonl"), "--model", str(tiny_model_dir),
                 "--warmup_dir", str(sgd_warmup_dir), "--output_dir", str(tmp_path / "o"), "--grad_type", "sgd"]) == 2
    assert "not found" in capsys.readouterr().err


def test_warnings_for_other_batch_size_and_other_warmup_data(adam_warmup_dir, tiny_model_dir, data_file, tmp_path,
                                                             caplog):
    from mint._io import atomic_write_json, read_json

    out = tmp_path / "features"
    _run(tiny_model_dir, data_file, adam_warmup_dir, out, proj_dim=16)
    assert "trained on other data" not in caplog.text  # same data and rendering as the warm-up
    manifest = read_json(out / "manifest.json")
    atomic_write_json(out / "manifest.json", manifest | {"complete": False})  # as if interrupted
    _run(tiny_model_dir, data_file, adam_warmup_dir, out, proj_dim=16, batch_size=5)
    assert "with batch_size 5 (the finished shards used 3)" in caplog.text
    _run(tiny_model_dir, data_file, adam_warmup_dir, tmp_path / "other", proj_dim=16, max_length=48)
    assert "trained on other data or rendering settings" in caplog.text


def test_dtype_is_passed_to_the_model_and_recorded(reference_store, tiny_model_dir, data_file, sgd_warmup_dir,
                                                   tmp_path):
    """`dtype` reaches the model loader; the store records the loaded precision (float32, the
    default on CPU, for the reference store)."""
    assert mint.model.store.read_manifest(reference_store)["settings"]["model_dtype"] == "float32"
    out = _run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "bf16", proj_dim=16, dtype="bfloat16")
    manifest = mint.model.store.read_manifest(out)
    assert manifest["settings"]["model_dtype"] == "bfloat16" and manifest["info"]["dtype"] == "bfloat16"
    feats = mint.load_features(out, normalized=False)
    assert feats["sft"].shape == (14, 16) and np.isfinite(feats["sft"]).all()
    with pytest.raises(MintError, match="model_dtype"):  # a float32 run refuses the bfloat16 store
        _run(tiny_model_dir, data_file, sgd_warmup_dir, out, proj_dim=16)


def test_projection_settings_recorded_and_a_resume_with_others_refused(reference_store, tiny_model_dir, data_file,
                                                                       sgd_warmup_dir, tmp_path):
    """sjlt end to end; the projection (kind, s) and shard_size are in the manifest, and a run with
    another one is refused; streaming (a tiny buffer) gives the whole-shard run's features (to
    float rounding: the dense projection's BLAS may choose its kernel by the row count)."""
    manifest = mint.model.store.read_manifest(reference_store)
    assert manifest["settings"]["projection"]["type"] == "rademacher" and manifest["shard_size"] == 4
    assert manifest["info"]["buffer_rows"] == 8 and manifest["info"]["memory_estimate_bytes"] > 0
    out = _run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "sjlt", projection="sjlt", sjlt_s=3)
    manifest = mint.model.store.read_manifest(out)
    assert manifest["settings"]["projection"] == {"type": "sjlt", "grad_dim": manifest["info"]["grad_dim"],
                                                  "proj_dims": [16, 64], "seed": 5, "s": 3, "chunk": 1 << 20,
                                                  "version": 1}
    sjlt = mint.load_features(out, dim=64, normalized=False)
    dense = mint.load_features(reference_store, dim=64, normalized=False)
    assert not np.allclose(sjlt["sft"], dense["sft"])
    # norms agree with the dense projection's to JL accuracy (both estimate the raw gradient's norm)
    ratio = np.linalg.norm(sjlt["sft"], axis=1) / np.linalg.norm(dense["sft"], axis=1)
    assert 0.6 < ratio.min() and ratio.max() < 1.6
    for other, match in ((dict(projection="sjlt", sjlt_s=2), "projection"), (dict(projection="rademacher"), "projection"),
                         (dict(projection="sjlt", sjlt_s=3, shard_size=5), "shard_size")):
        with pytest.raises(MintError, match=match):
            _run(tiny_model_dir, data_file, sgd_warmup_dir, out, **other)
    streamed = _run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "stream", buffer_mb=0)
    assert mint.model.store.read_manifest(streamed)["info"]["buffer_rows"] == 3  # one micro-batch
    streamed_files, whole_files = _feature_bytes(streamed), _feature_bytes(reference_store)
    assert streamed_files.keys() == whole_files.keys()
    for name in whole_files:
        a, b = (np.load(folder / "features" / name) for folder in (streamed, reference_store))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()), err_msg=name)


def test_a_step_that_cannot_fit_is_refused_before_any_work(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path,
                                                           monkeypatch, caplog):
    import logging

    import mint.model.features as features

    caplog.set_level(logging.INFO, logger="mint.model.features")
    monkeypatch.setattr(features, "_free_memory", lambda device: 1 << 20)  # 1 MiB free
    with pytest.raises(MintError, match="grads.batch_size|lora.r"):
        _run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "nofit")
    assert "estimated peak memory of the feature step on cpu" in caplog.text
    assert not (tmp_path / "nofit" / "manifest.json").exists()


def test_the_estimate_counts_logits_at_the_labelled_positions_only(tiny_model_dir, data_file, sgd_warmup_dir,
                                                                    tmp_path, monkeypatch):
    """The tiny model takes `logits_to_keep`, so the checked (and recorded) estimate counts the
    logits of the b longest responses, not of every position of a full batch."""
    import mint.model.memory as memory

    calls = []
    real = memory.estimate_feature_memory

    def spy(shape, **kw):
        calls.append((shape, kw))
        return real(shape, **kw)

    monkeypatch.setattr(memory, "estimate_feature_memory", spy)
    out = _run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "feats")
    first, last = calls[0], calls[-1]
    assert first[1]["logit_tokens"] is None  # before the data is tokenized: every position
    assert 0 < last[1]["logit_tokens"] < 3 * 64 and last[1]["batch_size"] == 3
    refined, worst = real(last[0], **last[1]), real(first[0], **first[1])
    assert refined.parts["logits"] == last[1]["logit_tokens"] * last[0].vocab_size * (last[0].param_bytes + 12)
    assert refined.total < worst.total
    assert mint.model.store.read_manifest(out)["info"]["memory_estimate_bytes"] == refined.total


def test_labelled_bound_is_the_sum_of_the_longest_responses():
    from types import SimpleNamespace

    from mint.model.features import _labelled_bound

    bound = _labelled_bound([SimpleNamespace(response_ids=(1,) * n) for n in (3, 9, 1, 5)])
    assert [bound(b) for b in (1, 2, 3, 4, 6)] == [9, 14, 17, 18, 18]


def test_trak_falls_back_to_the_tiles_when_it_cannot_run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path, caplog):
    """Without CUDA (or without traker[fast]) `projection trak` logs why and uses mint's rademacher
    tiles, which the manifest records."""
    import logging

    from mint.model.trak_projector import TRAK_INSTALL, why_not_trak

    assert "needs a CUDA device" in why_not_trak("cpu", [512])
    assert "multiples of 512" in why_not_trak("cuda:0", [1000])

    def missing(name):
        raise ImportError(f"No module named {name!r}")

    assert TRAK_INSTALL in why_not_trak("cuda:0", [512, 1024], importer=missing)
    assert why_not_trak("cuda:0", [512], importer=lambda name: None) is None
    caplog.set_level(logging.WARNING, logger="mint.model.trak_projector")
    out = _run(tiny_model_dir, data_file, sgd_warmup_dir, tmp_path / "trak", projection="trak", proj_dim=16)
    assert "projection trak is not available (trak's kernel needs a CUDA device" in caplog.text
    assert mint.model.store.read_manifest(out)["settings"]["projection"]["type"] == "rademacher"
