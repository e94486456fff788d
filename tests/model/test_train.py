"""mint.model.train: the weighted loss against plain references, and the training run's outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_alpaca_records
from mint.model.data import collate, collate_ids, load_examples, tokenize_examples
from mint.errors import MintError
from mint.model.modeling import LoraSettings, add_lora, load_model_and_tokenizer, lora_named_parameters, response_token_losses
from mint.model.train import accumulate_step, loss_coefficients, read_train_manifest, train_lora

LORA = LoraSettings(r=2, alpha=4, dropout=0.0)
FAST = dict(epochs=1, lr=1e-3, batch_size=4, lora=LORA, max_length=64, device="cpu", progress=False)


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    """A LoRA model whose B matrices are random (at init B = 0, so A would get no gradient)."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("d") / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(6)))
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    model = add_lora(model, LORA)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, p in lora_named_parameters(model):
            if "lora_B" in key:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    toks = tokenize_examples(load_examples(path), tok, max_length=64)
    return model, toks, collate_ids(tok)


def grads(model):
    return torch.cat([p.grad.flatten() for _, p in lora_named_parameters(model)])


def step_grads(model, toks, coefs, ids, batch_size):
    model.zero_grad(set_to_none=True)
    accumulate_step(model, toks, coefs, batch_size=batch_size, **ids)
    return grads(model)


def test_unit_weights_equal_the_unweighted_loss(setup):
    model, toks, ids = setup
    coefs = loss_coefficients(np.ones(len(toks)), "loss")
    assert np.array_equal(coefs, np.ones(len(toks)))
    got = step_grads(model, toks, coefs, ids, batch_size=len(toks))
    model.zero_grad(set_to_none=True)
    response_token_losses(model, collate(toks, "sft", **ids)).mean().backward()  # the ordinary loss
    torch.testing.assert_close(got, grads(model), rtol=1e-6, atol=1e-8)


def test_doubled_weight_matches_per_example_reference_for_any_split(setup):
    model, toks, ids = setup
    per_example = []
    for t in toks:  # plain reference: one backward per example
        model.zero_grad(set_to_none=True)
        response_token_losses(model, collate([t], "sft", **ids))[0].backward()
        per_example.append(grads(model))
    w = np.ones(len(toks))
    w[3] = 2.0
    coefs = loss_coefficients(w, "loss")
    assert np.isclose(coefs.mean(), 1.0) and np.isclose(coefs[3], 2 * coefs[0])
    expected = sum(float(c) * g for c, g in zip(coefs, per_example)) / len(toks)
    unit = sum(per_example) / len(toks)
    assert (expected - unit).abs().max() > 1e-4  # the weight really changes the update
    for batch_size in (6, 4, 2, 1):  # one forward pass ... six accumulated passes
        got = step_grads(model, toks, coefs, ids, batch_size=batch_size)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert np.array_equal(loss_coefficients(w, "none"), np.ones(len(w)))
    assert np.array_equal(loss_coefficients(w, "sampling"), np.ones(len(w)))


def adapter_tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_training_outputs_are_split_independent_and_seeded(tiny_model_dir, alpaca_file, tmp_path):
    a = train_lora(tiny_model_dir, alpaca_file, tmp_path / "a", **{**FAST, "batch_size": 4})
    b = train_lora(tiny_model_dir, alpaca_file, tmp_path / "b", **{**FAST, "batch_size": 2, "grad_accum": 2})
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-4, atol=1e-6)
    # same seed -> same bytes; unit weights with weighting=loss -> the same as no weighting
    c = train_lora(tiny_model_dir, alpaca_file, tmp_path / "c", weights=np.ones(24), weighting="loss", **FAST)
    d = train_lora(tiny_model_dir, alpaca_file, tmp_path / "d", weighting="none", **FAST)
    assert (a / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (c / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (d / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (a / "optimizer.safetensors").read_bytes() == (c / "optimizer.safetensors").read_bytes()
    m = read_train_manifest(a)
    assert m["config"]["n_train"] == 24 and m["n_steps"] == 6 and len(m["history"]) == 6
    assert m["config"]["data_fingerprint"] and "torch" in m["versions"]


def test_coreset_weights_and_sampling(tiny_model_dir, alpaca_file, tmp_path):
    idx, w = np.array([0, 5, 7, 20]), np.array([10.0, 2.0, 1.0, 11.0])
    base = train_lora(tiny_model_dir, alpaca_file, tmp_path / "unit", indices=idx, **FAST)
    weighted = train_lora(tiny_model_dir, alpaca_file, tmp_path / "w", indices=idx, weights=w, **FAST)
    sampled = train_lora(tiny_model_dir, alpaca_file, tmp_path / "s", indices=idx, weights=w,
                         weighting="sampling", **FAST)
    tb, tw, ts = adapter_tensors(base), adapter_tensors(weighted), adapter_tensors(sampled)
    assert any(not torch.equal(tb[k], tw[k]) for k in tb)
    assert any(not torch.equal(tb[k], ts[k]) for k in tb)
    assert np.array_equal(np.load(weighted / "indices.npy"), idx)


def test_resume_refuse_and_overwrite(tiny_model_dir, alpaca_file, tmp_path):
    out = train_lora(tiny_model_dir, alpaca_file, tmp_path / "run", **FAST)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    train_lora(tiny_model_dir, alpaca_file, out, **FAST)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp  # nothing redone
    with pytest.raises(MintError, match=r"other settings \(differing: lr\)"):
        train_lora(tiny_model_dir, alpaca_file, out, **{**FAST, "lr": 5e-4})
    train_lora(tiny_model_dir, alpaca_file, out, overwrite=True, **{**FAST, "lr": 5e-4})
    assert read_train_manifest(out)["config"]["lr"] == 5e-4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(MintError, match="not empty"):
        train_lora(tiny_model_dir, alpaca_file, tmp_path / "other", **FAST)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def _count_forwards(monkeypatch, stop):
    """Count the Trainer's forward passes; KeyboardInterrupt at pass number ``stop[0]`` (None: never)."""
    import mint.model.hf_trainer as hf

    real, calls = hf.response_losses, []

    def counting(*a, **k):
        calls.append(1)
        if stop[0] and len(calls) == stop[0]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(hf, "response_losses", counting)
    return calls


def test_interrupt_leaves_no_output(tiny_model_dir, alpaca_file, tmp_path, monkeypatch):
    _count_forwards(monkeypatch, [2])
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny_model_dir, alpaca_file, tmp_path / "run", **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_interrupted_run_resumes_to_the_same_result(tiny_model_dir, alpaca_file, tmp_path, monkeypatch):
    """Killed after a Trainer checkpoint, the run resumes from it (resume_from_checkpoint) to
    the bytes of an uninterrupted run; a checkpoint of other settings is not resumed."""
    opts = {**FAST, "epochs": 2, "lora": LoraSettings(r=2, alpha=4, dropout=0.1), "checkpoint_seconds": 0}
    whole = train_lora(tiny_model_dir, alpaca_file, tmp_path / "whole", **opts)  # 12 steps

    stop = [8]
    calls = _count_forwards(monkeypatch, stop)
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny_model_dir, alpaca_file, tmp_path / "run", **opts)
    assert not (tmp_path / "run").exists()
    assert (tmp_path / ".run.checkpoints" / "checkpoint-7" / "trainer_state.json").is_file()
    calls.clear()
    stop[0] = None
    out = train_lora(tiny_model_dir, alpaca_file, tmp_path / "run", **opts)
    assert len(calls) == 12 - 7  # steps 8..12 only
    for name in ("adapter/adapter_model.safetensors", "optimizer.safetensors"):
        assert (out / name).read_bytes() == (whole / name).read_bytes(), name
    assert read_train_manifest(out)["history"] == read_train_manifest(whole)["history"]
    assert not (tmp_path / ".run.checkpoints").exists()
    # a checkpoint of other settings is ignored, and so is one with resume_from_checkpoint=False
    calls.clear()
    stop[0] = 3
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny_model_dir, alpaca_file, tmp_path / "other", **opts)
    calls.clear()
    stop[0] = None
    train_lora(tiny_model_dir, alpaca_file, tmp_path / "other", **{**opts, "lr": 2e-3})
    assert len(calls) == 12
    calls.clear()
    stop[0] = 3
    with pytest.raises(KeyboardInterrupt):
        train_lora(tiny_model_dir, alpaca_file, tmp_path / "again", **opts)
    calls.clear()
    stop[0] = None
    train_lora(tiny_model_dir, alpaca_file, tmp_path / "again", resume_from_checkpoint=False, **opts)
    assert len(calls) == 12


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"indices": [0, 24]}, r"index 24 is outside the data set of 24 records"),
        ({"indices": [1, 1]}, "duplicates"),
        ({"indices": [0, 1], "weights": [1.0]}, "1 weights for 2 indices"),
        ({"indices": [0, 1], "weights": [1.0, -1.0]}, r"finite and >= 0, but the weight of index 1 is -1.0"),
        ({"indices": [0, 1], "weights": [0.0, 0.0]}, "every weight is 0"),
        ({"weighting": "bogus"}, "unknown weighting"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"epochs": 0}, "epochs must be > 0"),
        ({"lora": {"r": 2}}, "lora must be a mint.model.modeling.LoraSettings, got dict"),
        ({"bf16": True, "fp16": True}, "bf16 and fp16 are both set"),
        ({"lr_scheduler_type": "sawtooth"}, "unknown lr_scheduler_type 'sawtooth'; use one of linear, cosine"),
        ({"report_to": ["no_such_logger"]}, r"report_to no_such_logger is not a logging integration transformers knows"),
    ],
)
def test_bad_training_input(tiny_model_dir, alpaca_file, tmp_path, kwargs, pattern):
    with pytest.raises(MintError, match=pattern):
        train_lora(tiny_model_dir, alpaca_file, tmp_path / "run", **{**FAST, **kwargs})


def test_training_leaves_the_callers_rng_alone(tiny_model_dir, alpaca_file, tmp_path):
    """train_lora seeds torch inside the call only: the caller's generator state is unchanged
    after it, and does not change the result (LoRA init and dropout come from `seed`)."""
    opts = {**FAST, "lora": LoraSettings(r=2, alpha=4, dropout=0.1)}
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = train_lora(tiny_model_dir, alpaca_file, tmp_path / "a", **opts)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(456)
    torch.rand(3)
    b = train_lora(tiny_model_dir, alpaca_file, tmp_path / "b", **opts)
    for name in ("adapter/adapter_model.safetensors", "optimizer.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_legacy_coreset_file(tmp_path):
    """A coreset file of the older layout (`n_records`) as `mint train --coreset` now reads it:
    through `mint.pipeline.coresets.load_coreset` (load_coreset left mint.model.train)."""
    from mint.pipeline.coresets import load_coreset

    np.savez(tmp_path / "c.npz", indices=np.array([3, 1]), weights=np.array([2.0, 1.0]), n_records=np.array(10))
    c = load_coreset(tmp_path / "c.npz")
    assert c.indices.tolist() == [3, 1] and c.weights.tolist() == [2.0, 1.0] and c.n == 10 and c.data_sha256 is None
    np.savez(tmp_path / "bad.npz", weights=np.array([1.0]))
    with pytest.raises(MintError, match="no 'indices'"):
        load_coreset(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_text("x")
    with pytest.raises(MintError, match="not a readable"):
        load_coreset(tmp_path / "junk.npz")
