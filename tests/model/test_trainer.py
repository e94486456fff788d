"""mint.model.hf_trainer: the Trainer path's loss and gradients against plain references (one
backward per example), for any split of a step (batch size, accumulation, 2 gloo processes),
with gradient checkpointing; the step plan; TensorBoard logging."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_alpaca_records
from mint.model.data import collate, collate_ids, load_examples, tokenize_examples
from mint.model.hf_trainer import response_losses, step_plan
from mint.model.modeling import lora_named_parameters, response_token_losses
from mint.model.train import loss_coefficients, read_train_manifest, train_lora
from trainer_probe import WEIGHTS, lora_model, probe

HERE = Path(__file__).resolve().parent
# float32 sums in another order (micro-batches, processes): the gradients (entries up to ~1e-2) agree
# to ~1e-8 absolute; rtol 1e-5 with atol 1e-7 (1e-5 of the largest entry) leaves room and still fails
# for a weight applied twice or not at all (a difference > 1e-4)
RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    path = tmp_path_factory.mktemp("six") / "six.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(6)))
    return path


@pytest.fixture(scope="module")
def reference(tiny_model_dir, six):
    """sum_i c_i * grad l_i / n from one backward per example, and the plain per-example losses."""
    torch.set_num_threads(1)
    model, tok = lora_model(tiny_model_dir)
    ids = collate_ids(tok)
    toks = tokenize_examples(load_examples(six), tok, max_length=64)
    grads, losses = [], []
    for t in toks:
        model.zero_grad(set_to_none=True)
        loss = response_token_losses(model, collate([t], "sft", **ids))[0]
        loss.backward()
        loss = loss.detach()
        grads.append(torch.cat([p.grad.flatten() for _, p in lora_named_parameters(model)]))
        losses.append(loss.item())
    coefs = loss_coefficients(WEIGHTS, "loss")
    weighted = sum(float(c) * g for c, g in zip(coefs, grads)) / len(toks)
    unit = sum(grads) / len(toks)
    assert (weighted - unit).abs().max() > 1e-4  # the doubled weight really changes the update
    return {"weighted": weighted, "unit": unit, "loss": float(np.dot(coefs, losses) / len(toks)), "n": len(toks)}


def test_response_positions_only_give_the_same_losses(tiny_model_dir, six):
    model, tok = lora_model(tiny_model_dir)
    batch = collate(tokenize_examples(load_examples(six), tok, max_length=64), "sft", **collate_ids(tok))
    full = response_token_losses(model, batch, response_only=False)  # the [B, T, vocab] logits
    torch.testing.assert_close(response_losses(model, batch), full, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(response_token_losses(model, batch), full, rtol=1e-6, atol=1e-7)  # the default


def test_the_feature_step_takes_response_only_gradients(tiny_model_dir, six):
    """Per-example LoRA gradients through the response-only head equal those through the full
    logits (float rounding), and the head sees only the labelled positions."""
    from mint.model import gradients, modeling

    model, tok = lora_model(tiny_model_dir)
    batch = collate(tokenize_examples(load_examples(six), tok, max_length=64), "sft", **collate_ids(tok))
    collector = gradients.LoraGradCollector(model)
    fast = gradients.per_example_grads(model, batch, collector)
    real = modeling.response_token_losses
    try:
        modeling.response_token_losses = lambda m, b: real(m, b, response_only=False)
        plain = gradients.per_example_grads(model, batch, collector)
    finally:
        modeling.response_token_losses = real
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6)
    seen = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape))
    try:
        real(model, batch)
    finally:
        hook.remove()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    rows = 1
    for size in seen[0][:-1]:
        rows *= size
    assert rows == labelled < batch["input_ids"].numel()  # the head ran on the labelled positions only


def test_unit_weights_equal_the_unweighted_loss(tiny_model_dir, six, reference, tmp_path):
    grads, loss = probe(tiny_model_dir, six, tmp_path, batch_size=6, grad_accum=1, weights=np.ones(6))
    torch.testing.assert_close(grads, reference["unit"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("batch_size, grad_accum", [(6, 1), (4, 2), (2, 3), (1, 6)])
def test_doubled_weight_for_any_batch_size_and_accumulation(tiny_model_dir, six, reference, tmp_path,
                                                            batch_size, grad_accum):
    grads, loss = probe(tiny_model_dir, six, tmp_path, batch_size=batch_size, grad_accum=grad_accum)
    torch.testing.assert_close(grads, reference["weighted"], rtol=RTOL, atol=ATOL)
    assert loss == pytest.approx(reference["loss"], rel=1e-5)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model_dir, six, reference, tmp_path):
    grads, loss = probe(tiny_model_dir, six, tmp_path, batch_size=3, grad_accum=2, gradient_checkpointing=True)
    torch.testing.assert_close(grads, reference["weighted"], rtol=RTOL, atol=ATOL)
    assert loss == pytest.approx(reference["loss"], rel=1e-5)


@pytest.mark.slow
def test_two_gloo_processes_give_the_one_process_gradient(tiny_model_dir, six, reference, tmp_path):
    """torchrun, 2 CPU processes (gloo), 2 examples per process and pass, 2 passes: 8 slots for 6
    examples, so one rank also gets a zero-coefficient pad in the last pass."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "src"), str(HERE.parent),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(HERE / "trainer_probe.py"),
           str(tiny_model_dir), str(six), str(tmp_path), "2", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / "probe.pt")
    assert got["world"] == 2
    torch.testing.assert_close(got["grads"], reference["weighted"], rtol=RTOL, atol=ATOL)
    assert got["loss"] == pytest.approx(reference["loss"], rel=1e-5)


def test_step_plan_covers_every_example_once_over_the_ranks():
    steps = [list(range(0, 12)), list(range(12, 17))]  # a full step of 12, a last one of 5
    lengths = [(7 * p) % 5 for p in range(17)]
    coefs = np.arange(17, dtype=float) + 1
    for world in (1, 2, 3):
        plans = [step_plan(steps, lengths, coefs, batch_size=2, world_size=world, rank=r) for r in range(world)]
        assert len({len(p) for p in plans}) == 1  # the same number of forward passes on every rank
        real = sorted(p for plan in plans for batch in plan for p, c, n, is_real in batch if is_real)
        assert real == list(range(17))
        for plan in plans:
            for batch in plan:
                for p, c, n, is_real in batch:
                    assert n == (12 if p < 12 else 5) or not is_real
                    assert c == (coefs[p] if is_real else 0.0)
    one = step_plan(steps, lengths, coefs, batch_size=4)
    assert [len(b) for b in one] == [4, 4, 4, 4, 1]
    assert [lengths[p] for p, *_ in one[0] + one[1] + one[2]] == sorted(lengths[:12])  # by length within a step


def test_tensorboard_event_file_when_asked(tiny_model_dir, alpaca_file, tmp_path):
    pytest.importorskip("tensorboard")
    from mint.model.modeling import LoraSettings

    opts = dict(epochs=1, lr=1e-3, batch_size=8, lora=LoraSettings(r=2, alpha=4, dropout=0.0), max_length=64,
                device="cpu", progress=False)
    out = train_lora(tiny_model_dir, alpaca_file, tmp_path / "tb", report_to=["tensorboard"], **opts)
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    m = read_train_manifest(out)
    assert m["report_to"] == ["tensorboard"] and [e["loss"] for e in m["log_history"] if "loss" in e]
    plain = train_lora(tiny_model_dir, alpaca_file, tmp_path / "plain", **opts)
    assert not (plain / "tensorboard").exists()
    assert (plain / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (out / "adapter" / "adapter_model.safetensors").read_bytes()  # logging changes nothing
