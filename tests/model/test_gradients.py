"""Per-example gradients: batched hooks vs a loop of single-example backward() calls, the
loss decomposition, preconditioning, and NaN reporting."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mint.errors import MintError
from mint.model.gradients import LoraGradCollector, Preconditioner, per_example_grads, shard_features


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory):
    """Tiny model with a LoRA adapter whose B matrices are non-zero (fresh LoRA has B = 0,
    which would make the A gradients vanish and the check trivial)."""
    from conftest import build_tiny_model, build_tiny_tokenizer, make_alpaca_records

    from mint.model.data import collate_ids, load_examples, tokenize_examples
    from mint.model.modeling import LoraSettings, add_lora

    torch.set_num_threads(1)
    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok))
    model = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.1))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.eval()
    path = tmp_path_factory.mktemp("gdata") / "d.jsonl"
    import json
    path.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(12)))
    tokenized = tokenize_examples(load_examples(path), tok, max_length=64)
    return model, tok, tokenized, collate_ids(tok)


def _loop_grads(model, tokenized, view, ids):
    """Reference: one example at a time, ordinary backward(), gradients read from each parameter's .grad."""
    from mint.model.data import collate
    from mint.model.modeling import response_token_losses

    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for t in tokenized:
        model.zero_grad(set_to_none=True)
        response_token_losses(model, collate([t], view, **ids)).sum().backward()
        rows.append(torch.cat([p.grad.flatten() for p in params]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


@pytest.mark.parametrize("view", ["sft", "pt"])
def test_batched_per_example_grads_equal_single_example_loop(lora_setup, view):
    from mint.model.data import collate

    model, _, tokenized, ids = lora_setup
    collector = LoraGradCollector(model)
    assert collector.grad_dim == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # a batch with different lengths, so right padding is exercised
    batch = collate(tokenized[:7], view, **ids)
    assert (batch["attention_mask"] == 0).any()
    batched = per_example_grads(model, batch, collector)
    loop = _loop_grads(model, tokenized[:7], view, ids)
    rel = ((batched - loop).norm(dim=1) / loop.norm(dim=1)).max().item()
    assert rel < 1e-5, rel
    assert all(p.grad is None for p in model.parameters())


def test_loss_decomposition_and_same_response_ids(lora_setup):
    from mint.model.data import collate
    from mint.model.modeling import response_token_losses

    model, _, tokenized, ids = lora_setup
    sft = collate(tokenized, "sft", **ids)
    pt = collate(tokenized, "pt", **ids)
    for k, t in enumerate(tokenized):
        # the labelled tokens are the same response ids in both views
        assert sft["labels"][k][sft["labels"][k] != -100].tolist() == list(t.response_ids)
        assert pt["labels"][k][pt["labels"][k] != -100].tolist() == list(t.response_ids)
    with torch.no_grad():
        l_sft = response_token_losses(model, sft).double()
        l_pt = response_token_losses(model, pt).double()
        # L_IFL computed independently: minus the mean per-token log-ratio of the two views
        ifl = []
        for k, t in enumerate(tokenized):
            lp = []
            for view, b in (("sft", sft), ("pt", pt)):
                logits = model(input_ids=b["input_ids"][k:k + 1], attention_mask=b["attention_mask"][k:k + 1]).logits
                logp = torch.log_softmax(logits[0, :-1].double(), -1)
                lab = b["labels"][k, 1:]
                sel = lab != -100
                lp.append(logp[sel].gather(1, lab[sel][:, None]).squeeze(1))
            ifl.append(-(lp[0] - lp[1]).mean())
        ifl = torch.stack(ifl)
    torch.testing.assert_close(l_sft, l_pt + ifl, rtol=1e-5, atol=1e-5)


def test_adam_preconditioning_uses_given_state():
    g = torch.tensor([[1.0, -2.0, 0.5]])
    m = torch.tensor([0.1, 0.2, -0.3])
    v = torch.tensor([0.01, 0.04, 0.09])
    b1, b2, eps = 0.8, 0.95, 1e-3
    out = Preconditioner("adam", exp_avg=m, exp_avg_sq=v, betas=(b1, b2), eps=eps)(g)
    m2 = b1 * m.double() + (1 - b1) * g.double()
    v2 = b2 * v.double() + (1 - b2) * g.double() ** 2
    torch.testing.assert_close(out.double(), m2 / (v2.sqrt() + eps))
    default = Preconditioner("adam", exp_avg=m, exp_avg_sq=v)(g)
    assert not torch.allclose(default, out)
    assert torch.equal(Preconditioner("sign")(g), torch.sign(g))
    assert torch.equal(Preconditioner("sgd")(g), g)
    with pytest.raises(MintError, match="optimizer state"):
        Preconditioner("adam")
    with pytest.raises(MintError, match="grad_type"):
        Preconditioner("newton")


def test_shard_features_projection_and_nan_report(lora_setup):
    from mint.model.projection import dense_matrix, make_projector

    model, _, tokenized, ids = lora_setup
    collector = LoraGradCollector(model)
    pre = Preconditioner("sgd")
    projector = make_projector(collector.grad_dim, [16, 32], seed=1)
    common = dict(collector=collector, preconditioner=pre, batch_size=3, **ids)
    raw = shard_features(model, tokenized[:5], projector=make_projector(collector.grad_dim, None, 0), **common)
    proj = shard_features(model, tokenized[:5], projector=projector, **common)
    dense = torch.from_numpy(dense_matrix(collector.grad_dim, 32, seed=1)).double()
    for kind in ("sft", "pt"):
        expected = torch.from_numpy(raw[f"{kind}_full"]).double() @ dense[:, :16] / math.sqrt(16)
        np.testing.assert_allclose(proj[f"{kind}_16"], expected.numpy(), rtol=1e-4, atol=1e-5)
    # batch size does not change the features beyond float rounding
    other = shard_features(model, tokenized[:5], projector=projector, **(common | {"batch_size": 5}))
    np.testing.assert_allclose(other["sft_32"], proj["sft_32"], rtol=1e-4, atol=1e-6)
    # a NaN weight makes every gradient NaN: the error names the records
    p = next(p for n, p in model.named_parameters() if "lora_A" in n)
    saved = p.detach().clone()
    with torch.no_grad():
        p[0, 0] = float("nan")
    try:
        with pytest.raises(MintError, match=r"record\(s\) \[.*\d"):
            shard_features(model, tokenized[:2], projector=projector, **common)
    finally:
        with torch.no_grad():
            p.copy_(saved)


def test_in_place_adam_preconditioning_gives_the_bytes_of_the_plain_expressions():
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(5, 1000, generator=gen) * 1e-3
    m, v = torch.randn(1000, generator=gen) * 1e-3, torch.rand(1000, generator=gen) * 1e-6
    b1, b2, eps = 0.9, 0.999, 1e-8
    plain = (b1 * m + (1 - b1) * g) / (torch.sqrt(b2 * v + (1 - b2) * g * g) + eps)
    got = Preconditioner("adam", exp_avg=m, exp_avg_sq=v, betas=(b1, b2), eps=eps)(g)
    assert torch.equal(got, plain)


@pytest.mark.parametrize("kind", ["rademacher", "sjlt"])
def test_streaming_projection_equals_shard_at_once(lora_setup, kind):
    """Rows projected batch by batch (a buffer of 3, 4 or 7 rows, batches of 3) give the rows of
    one projection call over the whole shard: the same bytes for sjlt (rows are scattered one by
    one), float rounding for the dense projection (BLAS may choose its kernel by the row count,
    even at one thread on some processors)."""
    from mint.model.projection import make_projector

    model, _, tokenized, ids = lora_setup
    assert torch.get_num_threads() == 1
    collector = LoraGradCollector(model)
    gen = torch.Generator().manual_seed(1)
    pre = Preconditioner("adam", exp_avg=torch.randn(collector.grad_dim, generator=gen) * 1e-3,
                         exp_avg_sq=torch.rand(collector.grad_dim, generator=gen) * 1e-6)
    projector = make_projector(collector.grad_dim, [16, 600], seed=2, kind=kind)
    common = dict(collector=collector, preconditioner=pre, projector=projector, batch_size=3, **ids)
    whole = shard_features(model, tokenized[:7], **common)
    assert set(whole) == {"sft_16", "pt_16", "sft_600", "pt_600"}
    for rows in (3, 4, 7):
        streamed = shard_features(model, tokenized[:7], buffer_rows=rows, **common)
        for key in whole:
            if kind == "sjlt":
                assert np.array_equal(streamed[key], whole[key]), (rows, key)
            else:
                scale = float(np.abs(whole[key]).max())
                np.testing.assert_allclose(streamed[key], whole[key], rtol=1e-5, atol=1e-6 * scale,
                                           err_msg=f"{rows} rows, {key}")
