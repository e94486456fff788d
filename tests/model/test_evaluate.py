"""Evaluation: losses checked against a hand computation, text metrics against known values."""
from __future__ import annotations

import json
import math

import pytest

from conftest import make_alpaca_records
from mint.model.evaluate import evaluate, exact_match, lcs_length, lm_eval_command, read_metrics, rouge_l


def test_lcs_and_rouge_l_by_hand():
    assert lcs_length("abcbdab", "bdcaba") == 4  # the textbook example
    assert lcs_length([], ["a"]) == 0
    # prediction "the cat sat", reference "the cat is on the mat": LCS 2 (the cat)
    p, r = 2 / 3, 2 / 6
    assert rouge_l("The cat sat.", "the cat is on the mat") == pytest.approx(2 * p * r / (p + r))
    assert rouge_l("a b c", "a b c") == 1.0
    assert rouge_l("", "x") == 0.0 and rouge_l("x", "y") == 0.0
    assert exact_match("  Hello   World ", "hello world") == 1.0
    assert exact_match("hello world.", "hello world") == 0.0


def _hand_losses(model, tok, record):
    """Response-token mean cross entropy, one example at a time, from log-softmax by hand."""
    import torch

    user = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    prompt = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(record["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    out = []
    for head in (p_ids, [tok.bos_token_id]):
        ids = torch.tensor([head + r_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        total = sum(-logp[len(head) + t - 1, r_ids[t]].item() for t in range(len(r_ids)))
        out.append(total / len(r_ids))
    return out[0], out[1], len(r_ids)


def test_losses_match_hand_computation(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    records = make_alpaca_records(7)
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = evaluate(tiny_model_dir, data, output_dir=tmp_path / "ev", batch_size=3, max_length=128,
                       device="cpu", generate=True, max_new_tokens=4)

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    hand = [_hand_losses(model, tok, r) for r in records]
    sft = [h[0] for h in hand]
    pt = [h[1] for h in hand]
    n = [h[2] for h in hand]
    assert metrics["n_examples"] == 7 and metrics["n_response_tokens"] == sum(n)
    assert metrics["sft_loss"] == pytest.approx(sum(sft) / 7, rel=1e-5)
    assert metrics["pt_loss"] == pytest.approx(sum(pt) / 7, rel=1e-5)
    assert metrics["ifl_loss"] == pytest.approx(sum(sft) / 7 - sum(pt) / 7, rel=1e-4, abs=1e-6)
    token_loss = sum(s * c for s, c in zip(sft, n)) / sum(n)
    assert metrics["perplexity"] == pytest.approx(math.exp(token_loss), rel=1e-5)
    # per-task breakdown: records 1 and 4 carry task "reverse", the others no task
    assert set(metrics["per_task"]) == {"reverse"}
    assert metrics["per_task"]["reverse"]["sft_loss"] == pytest.approx((sft[1] + sft[4]) / 2, rel=1e-5)
    # generation ran for the short references only and was scored
    gen = metrics["generation"]
    assert 0 < gen["n_generated"] < 7 and gen["n_generated"] + gen["n_skipped_long"] == 7
    assert read_metrics(tmp_path / "ev") == json.loads(json.dumps(metrics))
    rows = [json.loads(x) for x in (tmp_path / "ev" / "per_example.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(7))
    assert rows[0]["sft_loss"] == pytest.approx(sft[0], rel=1e-5)
    assert metrics["provenance"]["data_fingerprint"]


def test_adapter_changes_losses_and_base_is_restored(tiny_model_dir, tmp_path):
    import torch

    from mint.model.modeling import LoraSettings, add_lora, load_model_and_tokenizer

    torch.set_num_threads(1)
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(4)))
    model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    peft_model = add_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0))
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # a non-zero adapter, so it changes the outputs
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    base_model, tok = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    base = evaluate(tiny_model_dir, data, max_length=128, model_and_tokenizer=(base_model, tok))
    tuned = evaluate(tiny_model_dir, data, adapter=adapter, max_length=128, model_and_tokenizer=(base_model, tok))
    again = evaluate(tiny_model_dir, data, max_length=128, model_and_tokenizer=(base_model, tok))
    assert tuned["sft_loss"] != pytest.approx(base["sft_loss"], rel=1e-4)
    assert again["sft_loss"] == pytest.approx(base["sft_loss"], rel=1e-6)  # the adapter was removed
    assert "peft=" in tuned["provenance"]["lm_eval"]
    assert lm_eval_command("B", "A", "hellaswag") == "lm_eval --model hf --model_args pretrained=B,peft=A --tasks hellaswag"


def test_mint_eval_command(tiny_model_dir, tmp_path, capsys):
    from mint.cli import main

    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(3)))
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--device", "cpu",
                 "--max_length", "64", "--output_dir", str(tmp_path / "ev")]) == 0
    shown = json.loads(capsys.readouterr().out.split("metrics written")[0])
    assert shown["n_examples"] == 3
    assert read_metrics(tmp_path / "ev")["sft_loss"] == pytest.approx(shown["sft_loss"])
