"""Shared offline fixtures: a tiny Llama built from a config and a tokenizer trained
in-process (with a chat template), plus a small Alpaca-style dataset in a temp folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Keep tests light on the 2-core machines they run on.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where torch sees a CUDA device."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu:
            item.add_marker(skip)
SHARED_DATA = REPO.parent / "shared" / "data"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to in and is are was be for on with as by at from this that it answer "
    "question write list sort number add subtract convert json name city country capital "
    "what which how many one two three four five six seven eight nine ten hello world "
    "please give short sentence summary translate reverse word letters apple banana"
).split()


def _training_corpus():
    import random

    rng = random.Random(0)
    for _ in range(400):
        yield " ".join(rng.choice(_WORDS) for _ in range(12))
    yield "0 1 2 3 4 5 6 7 8 9 { } [ ] : , . ? ! \" ' - + = ( )"


# Chat templates of the Llama-3 and Gemma kinds (the shape of the real ones, cut to what mint reads):
# Llama-3 ends an assistant turn with <|eot_id|> while its base EOS is <|end_of_text|>; Gemma trims
# the content, names the assistant "model" and ends a turn with <end_of_turn> and a newline.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
TEMPLATE_KINDS = {  # kind -> (special tokens, bos, eos, pad, chat template, the end-of-turn token)
    "chatml": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"], "<|endoftext|>", "<|im_end|>", "<pad>",
               CHAT_TEMPLATE, "<|im_end|>"),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|end_of_text|>", None, LLAMA3_TEMPLATE, "<|eot_id|>"),
    "gemma": (["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<pad>",
              GEMMA_TEMPLATE, "<end_of_turn>"),
}


def build_tiny_tokenizer(kind: str = "chatml"):
    """A byte-level BPE tokenizer trained in-process, with BOS/EOS/pad and a chat template of the
    given kind (`TEMPLATE_KINDS`: ChatML by default, Llama-3 or Gemma)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials, bos, eos, pad, template, _ = TEMPLATE_KINDS[kind]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    fast.chat_template = template
    return fast


def build_tiny_model(vocab_size: int, seed: int = 0):
    """A 2-layer Llama with hidden size 32, random weights from a fixed seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny model + tokenizer folder, loadable with from_pretrained(folder)."""
    folder = tmp_path_factory.mktemp("tiny_model")
    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok))
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_alpaca_records(n: int = 24):
    """Deterministic Alpaca-style records with a few distinct families."""
    records = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            records.append({"instruction": f"add {i} and {i + 1}", "input": "", "output": f"the answer is {2 * i + 1}"})
        elif kind == 1:
            records.append({"instruction": "reverse the word", "input": "apple" if i % 2 else "banana",
                            "output": "elppa" if i % 2 else "ananab", "task": "reverse"})
        else:
            records.append({"instruction": "what is the capital of the country", "input": f"country {i}",
                            "output": f"the capital is city {i}", "id": f"rec-{i}"})
    return records


@pytest.fixture()
def alpaca_file(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in make_alpaca_records():
            f.write(json.dumps(r) + "\n")
    return path


def write_every_format(folder, records) -> dict:
    """The same records in every file format mint reads, in `folder`; format name -> path."""
    import csv
    import gzip

    import datasets
    import pyarrow as pa
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    paths = {}
    paths["jsonl"] = folder / "d.jsonl"
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    paths["json"] = folder / "d.json"
    paths["json"].write_text(json.dumps(records), encoding="utf-8")
    paths["jsonl.gz"] = folder / "d.jsonl.gz"
    paths["jsonl.gz"].write_bytes(gzip.compress(paths["jsonl"].read_bytes()))
    table = pa.Table.from_pylist(records)
    paths["parquet"] = folder / "d.parquet"
    pq.write_table(table, paths["parquet"])
    paths["arrow"] = folder / "d.arrow"
    with pa.OSFile(str(paths["arrow"]), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    paths["arrow_stream"] = folder / "stream.arrow"
    with pa.OSFile(str(paths["arrow_stream"]), "wb") as sink, ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    for name, delimiter in (("csv", ","), ("tsv", "\t")):
        paths[name] = folder / f"d.{name}"
        with open(paths[name], "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(records)
    paths["dataset_folder"] = folder / "saved"
    datasets.Dataset.from_list(records).save_to_disk(str(paths["dataset_folder"]))
    return paths


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA
