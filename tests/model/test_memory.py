"""The memory estimate of the feature step (a pure function) and the refusal it drives."""
from __future__ import annotations

import pytest

from mint.errors import MintError
from mint.model.memory import GIB, ModelShape, check_feature_memory, estimate_feature_memory

# Llama-3-8B with LoRA r=128 on q, k, v, o (bf16): the scale of the paper
LLAMA3_8B_R128 = ModelShape(n_params=8_030_261_248, param_bytes=2, hidden_size=4096, intermediate_size=14336,
                            num_layers=32, vocab_size=128256, grad_dim=109_051_904, lora_io=32 * 27648)


def test_parts_follow_their_formulas():
    shape = ModelShape(n_params=1000, param_bytes=2, hidden_size=8, intermediate_size=16, num_layers=2,
                       vocab_size=50, grad_dim=100, lora_io=40)
    est = estimate_feature_memory(shape, batch_size=3, max_length=10, grad_type="adam", projection="rademacher",
                                  proj_dims=[64, 32], cache_bytes=1 << 30, buffer_rows=5)
    p = est.parts
    assert p["weights"] == 2000 and p["lora"] == 800 and p["adam_state"] == 800
    assert p["gradients"] == 3 * 3 * 100 * 4 and p["row_buffer"] == 5 * 100 * 4
    assert p["activations"] == 30 * 2 * (10 * 8 + 4 * 16) * 2 + 30 * 40 * 4
    assert p["logits"] == 30 * 50 * (2 + 12)
    assert p["projection"] == 100 * 64 * 4 + 4096 * 512 * 4 + 5 * 64 * 4  # all tiles fit the cache
    assert est.total == sum(p.values())
    sgd = estimate_feature_memory(shape, batch_size=3, max_length=10, grad_type="sgd", proj_dims=None, buffer_rows=5)
    assert sgd.parts["adam_state"] == 0 and sgd.parts["projection"] == 0 and sgd.parts["row_buffer"] == 0


def test_llama3_8b_r128_numbers():
    """The numbers of docs/design.md: the streaming step at batch 8 and 512 tokens."""
    est = estimate_feature_memory(LLAMA3_8B_R128, batch_size=8, max_length=512, projection="sjlt",
                                  proj_dims=[8192], cache_bytes=1 << 30, buffer_rows=8, sjlt_s=2)
    p = {k: round(v / GIB, 1) for k, v in est.parts.items()}
    assert p == {"weights": 15.0, "lora": 0.8, "adam_state": 0.8, "gradients": 9.8, "row_buffer": 3.2,
                 "activations": 37.5, "logits": 6.8, "projection": 0.8}
    assert 74 < est.total / GIB < 75
    # the old shard-at-once buffer alone: 2 x 64 rows of 109M floats
    assert round(2 * 64 * LLAMA3_8B_R128.grad_dim * 4 / GIB, 1) == 52.0
    dense = estimate_feature_memory(LLAMA3_8B_R128, batch_size=8, max_length=512, projection="rademacher",
                                    proj_dims=[8192], cache_bytes=1 << 30, buffer_rows=8)
    assert dense.parts["projection"] < 1.1 * GIB  # the cache bounds the tiles (the matrix is 3.3 TiB)


def test_refusal_names_the_batch_size_or_the_rank():
    shape = LLAMA3_8B_R128

    def at(b):
        return estimate_feature_memory(shape, batch_size=b, max_length=512, proj_dims=[8192], buffer_rows=b)

    big = at(8)
    check_feature_memory(big, available=big.total, where="cuda:0", batch_size=8, at_batch=at)  # fits exactly
    check_feature_memory(big, available=None, where="mps", batch_size=8, at_batch=at)  # unknown: no check
    with pytest.raises(MintError, match=r"Lower grads.batch_size to 4 \(or less\)") as e:
        check_feature_memory(big, available=at(4).total, where="cuda:0", batch_size=8, at_batch=at)
    assert "GiB are free on cuda:0" in str(e.value)
    with pytest.raises(MintError, match="even at grads.batch_size 1. Lower lora.r"):
        check_feature_memory(big, available=at(1).total - 1, where="cuda:0", batch_size=8, at_batch=at)
    # what is already loaded (the model) counts against the estimate, not against what is free
    check_feature_memory(big, available=big.total - big.parts["weights"], allocated=big.parts["weights"],
                         where="cpu", batch_size=8, at_batch=at)


def test_logits_counted_at_the_given_positions():
    """The response-only head: logits only where a micro-batch has labels, never more than every position."""
    full = estimate_feature_memory(LLAMA3_8B_R128, batch_size=8, max_length=512, proj_dims=[8192])
    some = estimate_feature_memory(LLAMA3_8B_R128, batch_size=8, max_length=512, proj_dims=[8192], logit_tokens=800)
    assert some.parts["logits"] == 800 * 128256 * (2 + 12)
    assert full.total - some.total == full.parts["logits"] - some.parts["logits"]
    capped = estimate_feature_memory(LLAMA3_8B_R128, batch_size=8, max_length=512, proj_dims=[8192],
                                     logit_tokens=10**9)
    assert capped.parts == full.parts
