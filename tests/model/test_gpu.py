"""The CUDA paths, on a GPU when there is one (marked `gpu`: skipped elsewhere): the same
features and losses on CUDA as on the CPU, to float32 rounding."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_response_losses_on_cuda_match_cpu(tiny_model_dir, alpaca_file):
    import torch

    from mint.model.data import collate, collate_ids, load_examples, tokenize_examples
    from mint.model.modeling import load_model_and_tokenizer, response_token_losses

    examples = load_examples(alpaca_file)[:8]
    losses = {}
    for device in ("cpu", "cuda"):
        model, tok = load_model_and_tokenizer(tiny_model_dir, device=device, dtype="float32")
        tokenized = tokenize_examples(examples, tok, max_length=64)
        with torch.no_grad():
            losses[device] = response_token_losses(model, collate(tokenized, "sft", **collate_ids(tok))).cpu()
    torch.testing.assert_close(losses["cuda"], losses["cpu"], rtol=1e-4, atol=1e-4)


def test_projection_on_cuda_matches_cpu():
    """The numpy tiles copied to the GPU give the CPU's projection; the default on CUDA draws the
    tiles on the device (another matrix, recorded as such), deterministically."""
    import torch

    from mint.model.projection import BlockProjector, make_projector

    x = torch.randn(6, 5000, generator=torch.Generator().manual_seed(0))
    cpu = make_projector(5000, [64, 128], seed=3, device="cpu").project(x)
    gpu = BlockProjector(5000, [64, 128], seed=3, device="cuda", tiles="numpy").project(x.cuda())
    for d in (64, 128):
        torch.testing.assert_close(gpu[d].cpu(), cpu[d], rtol=1e-4, atol=1e-4)
    on_device = make_projector(5000, [64, 128], seed=3, device="cuda")
    assert on_device.describe()["tiles"] == "torch-cuda"
    first = on_device.project(x.cuda())
    again = make_projector(5000, [64, 128], seed=3, device="cuda", cache_bytes=0).project(x.cuda())
    assert all(torch.equal(first[d], again[d]) for d in (64, 128))
    norms = first[128].norm(dim=1).cpu() / x.norm(dim=1)
    assert ((norms - 1).abs() < 0.3).all()


def test_sjlt_on_cuda_matches_cpu_and_is_deterministic():
    import torch

    from mint.model.projection import make_projector

    x = torch.randn(5, 3_000_000, generator=torch.Generator().manual_seed(1))
    cpu = make_projector(3_000_000, [256, 1024], seed=2, kind="sjlt", sjlt_s=2).project(x)
    proj = make_projector(3_000_000, [256, 1024], seed=2, kind="sjlt", sjlt_s=2, device="cuda")
    gpu, again = proj.project(x.cuda()), proj.project(x.cuda())
    for d in (256, 1024):
        assert torch.equal(gpu[d], again[d])  # index_put_(accumulate=True) sorts: the same bytes every call
        rel = ((gpu[d].cpu() - cpu[d]).norm(dim=1) / cpu[d].norm(dim=1)).max().item()
        assert rel < 1e-5, rel


def test_features_on_cuda_in_bfloat16_are_float32_and_close_to_float32(tiny_model_dir, alpaca_file):
    """Forward/backward in bfloat16 (checked supported), gradients and features in float32."""
    import numpy as np
    import torch

    from mint.model.data import collate_ids, load_examples, tokenize_examples
    from mint.model.gradients import LoraGradCollector, Preconditioner, shard_features
    from mint.model.modeling import LoraSettings, add_lora, load_model_and_tokenizer, resolve_dtype
    from mint.model.projection import make_projector

    assert resolve_dtype("auto", "cuda:0") == (torch.bfloat16 if torch.cuda.is_bf16_supported(False)
                                               else torch.float32)
    out = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model, tok = load_model_and_tokenizer(tiny_model_dir, device="cuda", dtype=dtype)
        model = add_lora(model, LoraSettings(r=4, alpha=8))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1, generator=torch.Generator(device="cuda").manual_seed(1))
        model.eval()
        tokenized = tokenize_examples(load_examples(alpaca_file)[:6], tok, max_length=64)
        collector = LoraGradCollector(model)
        projector = make_projector(collector.grad_dim, 64, seed=0, device="cuda")
        out[dtype] = shard_features(model, tokenized, collector=collector, preconditioner=Preconditioner("sgd"),
                                    projector=projector, batch_size=3, buffer_rows=3, **collate_ids(tok))
    for key, arr in out["bfloat16"].items():
        assert arr.dtype == np.float32 and np.isfinite(arr).all()
        cos = (arr * out["float32"][key]).sum(1) / np.linalg.norm(arr, axis=1) / np.linalg.norm(out["float32"][key], axis=1)
        assert cos.min() > 0.95, (key, cos.min())
