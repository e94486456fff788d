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
    import torch

    from mint.model.projection import make_projector

    x = torch.randn(6, 5000, generator=torch.Generator().manual_seed(0))
    cpu = make_projector(5000, [64, 128], seed=3, device="cpu").project(x)
    gpu = make_projector(5000, [64, 128], seed=3, device="cuda").project(x.cuda())
    for d in (64, 128):
        torch.testing.assert_close(gpu[d].cpu(), cpu[d], rtol=1e-4, atol=1e-4)
