"""mint.model.data: schemas, bad input, rendering, the two views, truncation, fingerprints."""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from conftest import build_tiny_tokenizer, make_alpaca_records
from mint.model.data import (
    collate,
    collate_ids,
    dataset_fingerprint,
    load_examples,
    render_prompt,
    tokenize_examples,
)
from mint.errors import MintError


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_three_schemas_and_extra_fields(tmp_path):
    a = load_examples(write_jsonl(tmp_path / "a.jsonl", make_alpaca_records(6)))
    assert [e.schema for e in a] == ["alpaca"] * 6
    assert a[1].record["task"] == "reverse" and a[2].record["id"] == "rec-2"
    assert a[1].prompt_messages == ({"role": "user", "content": "reverse the word\n\napple"},)
    assert a[0].prompt_messages[0]["content"] == "add 0 and 1"  # empty input adds nothing
    chat = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"},
                          {"role": "assistant", "content": "hello again"}], "source": "x"}]
    c = load_examples(write_jsonl(tmp_path / "c.jsonl", chat))
    assert c[0].schema == "chat" and c[0].response == "hello again" and len(c[0].prompt_messages) == 4
    assert c[0].record is not None and c[0].record["source"] == "x"
    pc = load_examples(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: 2+2\nA:", "completion": " 4"}]))
    assert pc[0].schema == "prompt_completion" and pc[0].prompt_text == "Q: 2+2\nA:"


def test_json_array_and_gzip(tmp_path):
    records = make_alpaca_records(5)
    (tmp_path / "a.json").write_text(json.dumps(records))
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    x = load_examples(tmp_path / "a.json")
    y = load_examples(tmp_path / "a.jsonl.gz")
    assert [e.response for e in x] == [e.response for e in y] == [r["output"] for r in records]


@pytest.mark.parametrize(
    "records, pattern",
    [
        ([{"instruction": "a", "output": "b"}, {"foo": 1}], r"line 2 \(record 1\): no schema fits"),
        ([{"instruction": "a", "output": ""}], r"line 1.*'output' is empty"),
        ([{"instruction": "a", "input": ""}], r"missing key 'output'"),
        ([{"instruction": "a", "output": 3}], r"'output' must be a string, found int"),
        ([{"instruction": ["a"], "output": "b"}], r"'instruction' must be a string, found list"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], r"no assistant message"),
        ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}],
         r"the response\) is empty"),
        ([{"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "x"}]}],
         r"messages\[0\].content must be a string"),
        ([{"messages": "hi"}], r"non-empty list"),
        ([{"prompt": "p"}], r"missing key 'completion'"),
        ([{"instruction": "a", "output": "b"}, {"prompt": "p", "completion": "c"}], r"prompt_completion record in an alpaca"),
    ],
)
def test_bad_records(tmp_path, records, pattern):
    with pytest.raises(MintError, match=pattern):
        load_examples(write_jsonl(tmp_path / "bad.jsonl", records))


def test_bad_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(MintError, match="empty"):
        load_examples(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    with pytest.raises(MintError, match=r"line 2: malformed JSON"):
        load_examples(tmp_path / "broken.jsonl")
    with pytest.raises(MintError, match="unknown schema"):
        load_examples(tmp_path / "broken.jsonl", schema="vicuna")


def test_line_numbers_skip_blank_lines(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "output": 1}\n')
    with pytest.raises(MintError, match=r"line 3 \(record 1\)"):
        load_examples(tmp_path / "d.jsonl")


def test_rendering(tmp_path, tok):
    ex = load_examples(write_jsonl(tmp_path / "a.jsonl", make_alpaca_records(2)))
    chat = render_prompt(ex[1], tok, template="auto")
    assert chat == "<|im_start|>user\nreverse the word\n\napple<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(ex[1], tok, template="plain") == "### User:\nreverse the word\n\napple\n\n### Assistant:\n"
    pc = load_examples(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: 2+2\nA:", "completion": " 4"}]))
    assert render_prompt(pc[0], tok) == "Q: 2+2\nA:"  # auto keeps a raw prompt verbatim
    assert render_prompt(pc[0], tok, template="chat").startswith("<|im_start|>user\nQ: 2+2")
    no_chat = build_tiny_tokenizer()
    no_chat.chat_template = None
    assert render_prompt(ex[1], no_chat).startswith("### User:")
    with pytest.raises(MintError, match="no chat template"):
        render_prompt(ex[1], no_chat, template="chat")
    with pytest.raises(MintError, match="unknown template"):
        render_prompt(ex[1], tok, template="fancy")


def test_response_ids_identical_in_both_views(tmp_path, tok):
    ex = load_examples(write_jsonl(tmp_path / "a.jsonl", make_alpaca_records(9)))
    toks = tokenize_examples(ex, tok, max_length=128)
    ids = collate_ids(tok)
    sft = collate(toks, "sft", **ids)
    pt = collate(toks, "pt", **ids)
    for k, t in enumerate(toks):
        assert t.response_ids[-1] == tok.eos_token_id
        assert t.response_ids[:-1] == tuple(tok(ex[k].response, add_special_tokens=False)["input_ids"])
        s_lab = sft["labels"][k][sft["labels"][k] != -100].tolist()
        p_lab = pt["labels"][k][pt["labels"][k] != -100].tolist()
        assert s_lab == p_lab == list(t.response_ids)
        # PT view: the start token, then the response, then padding
        n = len(t.response_ids) + 1
        assert pt["input_ids"][k, :n].tolist() == [ids["bos_id"], *t.response_ids]
        assert pt["attention_mask"][k].sum() == n
        assert sft["input_ids"][k, : len(t.prompt_ids)].tolist() == list(t.prompt_ids)
        assert (sft["input_ids"][k, sft["attention_mask"][k] == 0] == ids["pad_id"]).all()
    # The SFT view is the rendered prompt and the response, as text.
    text = tok.decode(list(toks[1].prompt_ids) + list(toks[1].response_ids))
    assert text == render_prompt(ex[1], tok) + ex[1].response + "<|im_end|>"


def test_bos_prepended_only_when_tokenizer_adds_it(tmp_path, tok):
    from tokenizers import processors

    ex = load_examples(write_jsonl(tmp_path / "a.jsonl", make_alpaca_records(2)))
    assert tokenize_examples(ex, tok, max_length=128)[0].prompt_ids[0] != tok.bos_token_id
    bos_tok = build_tiny_tokenizer()
    bos_tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos_tok.bos_token_id)])
    assert bos_tok("a")["input_ids"][0] == bos_tok.bos_token_id
    with_bos = tokenize_examples(ex, bos_tok, max_length=128)
    plain = tokenize_examples(ex, tok, max_length=128)
    assert with_bos[0].prompt_ids == (bos_tok.bos_token_id, *plain[0].prompt_ids)
    assert with_bos[0].response_ids == plain[0].response_ids


def test_chat_template_failure_names_the_record(tmp_path):
    strict = build_tiny_tokenizer()
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "ok"}]}]
    ex = load_examples(write_jsonl(tmp_path / "c.jsonl", chat))
    with pytest.raises(MintError, match=r"record 1: the tokenizer's chat template failed.*System role"):
        tokenize_examples(ex, strict, max_length=64)
    assert len(tokenize_examples(ex, strict, max_length=64, template="plain")) == 2


def test_truncation_keeps_the_response(tmp_path, tok, caplog):
    long_input = " ".join(["apple banana"] * 30)
    records = [{"instruction": "sort the list", "input": long_input, "output": "one two three"},
               {"instruction": "a", "output": "hello " * 80},
               {"instruction": "add 1 and 2", "output": "three"}]
    ex = load_examples(write_jsonl(tmp_path / "a.jsonl", records))
    full = tokenize_examples(ex, tok, max_length=4096)
    max_length = len(full[0].prompt_ids) - 5 + len(full[0].response_ids)
    assert len(full[2].prompt_ids) + len(full[2].response_ids) <= max_length
    assert len(full[1].response_ids) > max_length
    with caplog.at_level("WARNING"):
        cut = tokenize_examples(ex, tok, max_length=max_length)
    # prompt cut from the left, response intact
    assert cut[0].truncated and not cut[0].response_truncated
    assert cut[0].response_ids == full[0].response_ids
    assert cut[0].prompt_ids == full[0].prompt_ids[5:]
    # response alone too long: one prompt token kept, response cut from the right (PT view fits too)
    assert cut[1].truncated and cut[1].response_truncated
    assert len(cut[1].prompt_ids) == 1 and cut[1].prompt_ids[0] == full[1].prompt_ids[-1]
    assert cut[1].response_ids == full[1].response_ids[: max_length - 1]
    assert cut[2] == full[2]
    assert "2 of 3 examples truncated" in caplog.text
    for view in ("sft", "pt"):
        assert collate(cut, view, **collate_ids(tok))["input_ids"].shape[1] <= max_length


def test_prompt_alone_too_long(tmp_path, tok):
    records = make_alpaca_records(3) + [{"instruction": " ".join(["hello world"] * 40), "output": "ok"}]
    ex = load_examples(write_jsonl(tmp_path / "a.jsonl", records))
    with pytest.raises(MintError, match=r"1 record\(s\) have a prompt that alone fills max_length=64.*record 3"):
        tokenize_examples(ex, tok, max_length=64)
    cut = tokenize_examples(ex, tok, max_length=64, long_prompts="truncate")
    assert cut[3].truncated and len(cut[3].prompt_ids) + len(cut[3].response_ids) == 64
    with pytest.raises(MintError, match="max_length"):
        tokenize_examples(ex, tok, max_length=1)


def test_collate_padding_and_masks(tmp_path, tok):
    ex = load_examples(write_jsonl(tmp_path / "a.jsonl", make_alpaca_records(4)))
    toks = tokenize_examples(ex, tok, max_length=128)
    batch = collate(toks, "sft", pad_id=7, bos_id=None)
    lengths = [len(t.prompt_ids) + len(t.response_ids) for t in toks]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"].dtype == torch.long
    with pytest.raises(ValueError):
        collate(toks, "pt", pad_id=7, bos_id=None)


def test_fingerprint(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", make_alpaca_records(4))
    b = write_jsonl(tmp_path / "b.jsonl", make_alpaca_records(4))
    s = {"template": "auto", "max_length": 128}
    assert dataset_fingerprint(a, s) == dataset_fingerprint(b, s)
    assert dataset_fingerprint(a, s) != dataset_fingerprint(a, {**s, "max_length": 64})
    write_jsonl(b, make_alpaca_records(5))
    assert dataset_fingerprint(a, s) != dataset_fingerprint(b, s)


def test_chunked_tokenization_equals_one_call(tmp_path, tok, monkeypatch):
    from mint.model import data

    ex = load_examples(write_jsonl(tmp_path / "a.jsonl", make_alpaca_records(7)))
    whole = tokenize_examples(ex, tok, max_length=128)
    monkeypatch.setattr(data, "_TOKENIZE_CHUNK", 3)  # 3 + 3 + 1 examples, with the progress bar on
    assert tokenize_examples(ex, tok, max_length=128, progress=True) == whole
    assert tokenize_examples([], tok, max_length=128) == []
