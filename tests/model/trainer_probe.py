"""The gradient of one optimizer step of `mint.model.hf_trainer.WeightedTrainer`, taken just before
the optimizer steps: imported by tests/model/test_trainer.py, and run under torchrun by it
(`torchrun --nproc_per_node 2 trainer_probe.py MODEL DATA OUT BATCH ACCUM`) for the 2-process case."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

LORA = dict(r=2, alpha=4, dropout=0.0)
WEIGHTS = np.array([1.0, 1.0, 1.0, 2.0, 1.0, 1.0])  # example 3 counts twice


def lora_model(model_dir):
    """The tiny model with a LoRA adapter whose B matrices are random (at init B = 0, and A gets no gradient)."""
    import torch

    from mint.model.modeling import LoraSettings, add_lora, load_model_and_tokenizer, lora_named_parameters

    model, tok = load_model_and_tokenizer(model_dir, device="cpu")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = add_lora(model, LoraSettings(**LORA))
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for key, p in lora_named_parameters(model):
                if "lora_B" in key:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model, tok


def probe(model_dir, data, out, *, batch_size: int, grad_accum: int, weights=WEIGHTS, **settings):
    """(the LoRA gradient of the first optimizer step, its weighted loss): one step over every
    example of ``data``."""
    import torch
    from transformers import TrainerCallback

    from mint.model.data import collate_ids, load_examples, tokenize_examples
    from mint.model.distributed import process_group
    from mint.model.hf_trainer import build_trainer, training_arguments
    from mint.model.modeling import lora_named_parameters
    from mint.model.train import loss_coefficients

    _, world, _ = process_group()
    model, tok = lora_model(model_dir)
    model.train()
    tokenized = tokenize_examples(load_examples(data), tok, max_length=64)
    config = {"batch_size": batch_size, "grad_accum": grad_accum, "lr": 1e-3, "weight_decay": 0.0,
              "max_grad_norm": None, "warmup_ratio": 0.0, "seed": 0, **settings}
    args = training_arguments(config, output_dir=out, n_steps=1, device="cpu")
    history, seen = [], []

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kw):
            if not seen:
                seen.append(torch.cat([p.grad.detach().flatten().clone() for _, p in lora_named_parameters(model)]))

    trainer = build_trainer(model, tokenized, [list(range(len(tokenized)))], loss_coefficients(weights, "loss"),
                            ids=collate_ids(tok), args=args, history=history, checkpoint_seconds=1e9, progress=False)
    trainer.add_callback(Grab())
    assert world == 1 or args.world_size == world
    trainer.train()
    return seen[0], history[0]["loss"]


if __name__ == "__main__":
    import torch

    model_dir, data, out, bs, ga = sys.argv[1:6]
    grads, loss = probe(model_dir, data, Path(out) / "trainer", batch_size=int(bs), grad_accum=int(ga))
    import torch.distributed as dist

    if dist.get_rank() == 0:
        torch.save({"grads": grads, "loss": loss, "world": dist.get_world_size()}, Path(out) / "probe.pt")
    dist.barrier()
