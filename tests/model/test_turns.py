"""Chat-template turns: the response ends with the template's end-of-turn token (ChatML, Llama-3 and
Gemma kinds); with `assistant_turns: all` every assistant turn is learned, on the same ids in both
views, so L_IFL = L_SFT - L_PT holds exactly; generation stops on the model's eos ids."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import TEMPLATE_KINDS, build_tiny_model, build_tiny_tokenizer
from mint.errors import MintError
from mint.model.data import Example, collate, collate_ids, tokenize_examples

CONVERSATION = ({"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": " hello world "}, {"role": "user", "content": "again please"})
MULTI = Example(0, "chat", CONVERSATION, "the answer is two", {}, None, (2,))
SINGLE = Example(1, "chat", CONVERSATION[1:2], "one two three", {}, None, ())


@pytest.fixture(scope="module", params=sorted(TEMPLATE_KINDS))
def kind_tok(request):
    return request.param, build_tiny_tokenizer(request.param)


def _eot(kind, tok) -> int:
    return tok.convert_tokens_to_ids(TEMPLATE_KINDS[kind][5])


def test_response_ends_with_the_templates_end_of_turn(kind_tok):
    kind, tok = kind_tok
    for turns in ("last", "all"):
        (t,) = tokenize_examples([SINGLE], tok, max_length=256, assistant_turns=turns)
        assert t.response_ids[-1] == _eot(kind, tok)
        assert t.response_ids[:-1] == tuple(tok("one two three", add_special_tokens=False)["input_ids"])
    if kind != "chatml":
        assert _eot(kind, tok) != tok.eos_token_id  # the turn ends with what chat serving sees, not EOS


def test_sft_view_is_what_the_template_writes(kind_tok):
    kind, tok = kind_tok
    (t,) = tokenize_examples([MULTI], tok, max_length=256, assistant_turns="all")
    full = tok.apply_chat_template(list(CONVERSATION) + [{"role": "assistant", "content": MULTI.response}],
                                   tokenize=False)
    text = tok.decode([i for seg in t.segments for i in seg])
    assert full.startswith(text) and full[len(text):] in ("", "\n")  # all but the newline after the last turn
    learned = [tok.decode(s) for s in t.segments[1::2]]
    eot = TEMPLATE_KINDS[kind][5]
    content = " hello world " if kind == "chatml" else "hello world"  # the other two templates trim
    assert learned == [content + eot, "the answer is two" + eot]


def test_single_turn_ids_do_not_depend_on_assistant_turns(kind_tok):
    _, tok = kind_tok
    assert tokenize_examples([SINGLE], tok, max_length=256, assistant_turns="all") == \
        tokenize_examples([SINGLE], tok, max_length=256, assistant_turns="last")


def test_last_learns_only_the_last_turn(kind_tok):
    kind, tok = kind_tok
    (last,) = tokenize_examples([MULTI], tok, max_length=256, assistant_turns="last")
    (every,) = tokenize_examples([MULTI], tok, max_length=256, assistant_turns="all")
    assert len(last.segments) == 2 and len(every.segments) == 4
    assert last.response_ids == every.segments[3]
    # the same token sequence in the SFT view, only the labels differ (up to the first turn's newline)
    assert tok.decode(list(last.prompt_ids)) == tok.decode([i for s in every.segments[:3] for i in s])


def test_multi_turn_identity_on_the_same_ids(tmp_path):
    """L_SFT and L_PT are means over the same learned ids; their difference is the mean of the
    per-token differences: L_IFL = L_SFT - L_PT holds exactly."""
    tok = build_tiny_tokenizer("llama3")
    model = build_tiny_model(len(tok)).eval()
    toks = tokenize_examples([MULTI, SINGLE], tok, max_length=256, assistant_turns="all")
    ids = collate_ids(tok)
    sft, pt = collate(toks, "sft", **ids), collate(toks, "pt", **ids)
    with torch.no_grad():
        per_view = {}
        for view, batch in (("sft", sft), ("pt", pt)):
            logp = torch.log_softmax(model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits.double(), -1)
            per_view[view] = [
                [-logp[k, pos - 1, batch["labels"][k, pos]].item() for pos in range(1, batch["labels"].shape[1])
                 if batch["labels"][k, pos] != -100] for k in range(len(toks))]
    from mint.model.modeling import response_token_losses

    with torch.no_grad():
        l_sft, l_pt = response_token_losses(model, sft), response_token_losses(model, pt)
    for k, t in enumerate(toks):
        for view, batch in (("sft", sft), ("pt", pt)):
            assert batch["labels"][k][batch["labels"][k] != -100].tolist() == list(t.response_ids)
        s, p = per_view["sft"][k], per_view["pt"][k]
        assert len(s) == len(p) == len(t.response_ids)
        ifl = sum(a - b for a, b in zip(s, p)) / len(s)
        assert math.isclose(l_sft[k].item() - l_pt[k].item(), ifl, rel_tol=1e-4, abs_tol=1e-5)
    assert len(toks[0].response_ids) > len(toks[0].segments[3])  # both assistant turns are in the labels


def test_plain_template_multi_turn():
    tok = build_tiny_tokenizer()
    (last,) = tokenize_examples([MULTI], tok, max_length=256, template="plain", assistant_turns="last")
    (every,) = tokenize_examples([MULTI], tok, max_length=256, template="plain", assistant_turns="all")
    assert tok.decode(list(last.prompt_ids)) == ("### System:\nbe brief\n\n### User:\nhi\n\n### Assistant:\n hello world "
                                                 "\n\n### User:\nagain please\n\n### Assistant:\n")
    assert [tok.decode(s) for s in every.segments] == [
        "### System:\nbe brief\n\n### User:\nhi\n\n### Assistant:\n", " hello world <|im_end|>",
        "\n\n### User:\nagain please\n\n### Assistant:\n", "the answer is two<|im_end|>"]


def test_template_without_an_end_of_turn_token_gets_eos():
    tok = build_tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    (t,) = tokenize_examples([SINGLE], tok, max_length=256)
    assert t.response_ids[-1] == tok.eos_token_id and tok.decode(list(t.response_ids)) == "one two three<|im_end|>"
    # a template that renders earlier turns differently cannot split a conversation into turns
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}{{ m['content'] }}{% else %}[{{ m['role'] }}]"
                         "{% endif %}{% endfor %}{% if add_generation_prompt %}>{% endif %}")
    assert tokenize_examples([SINGLE], tok, max_length=256)[0].response_ids[-1] == tok.eos_token_id
    with pytest.raises(MintError, match="record 0: the chat template does not render the conversation"):
        tokenize_examples([MULTI], tok, max_length=256, assistant_turns="all")


def test_multi_turn_truncation_keeps_the_latest_turns():
    tok = build_tiny_tokenizer()
    (full,) = tokenize_examples([MULTI], tok, max_length=512, assistant_turns="all")
    first, turn0, second, turn1 = (len(s) for s in full.segments)
    (cut,) = tokenize_examples([MULTI], tok, max_length=first + turn0 + second + turn1 - 3, assistant_turns="all")
    assert cut.truncated and cut.segments[1:] == full.segments[1:] and cut.segments[0] == full.segments[0][3:]
    for room, expected in ((second + turn1, full.segments[2]), (second + turn1 - 2, full.segments[2][2:])):
        (cut,) = tokenize_examples([MULTI], tok, max_length=room, assistant_turns="all",
                                   long_prompts="truncate")  # the first context alone is longer than that
        assert cut.truncated and not cut.response_truncated
        assert cut.segments == (expected, full.segments[3])  # the first turn is gone from both views
    (cut,) = tokenize_examples([MULTI], tok, max_length=4, assistant_turns="all", long_prompts="truncate")
    assert cut.response_truncated and cut.sft_length == 4 and cut.segments[1] == full.segments[3][:3]


def test_generation_stops_on_the_generation_config_ids():
    from transformers import GenerationConfig

    from mint.model.evaluate import stop_ids

    tok = build_tiny_tokenizer("llama3")
    model = build_tiny_model(len(tok))
    eot, end = _eot("llama3", tok), tok.eos_token_id
    model.generation_config = GenerationConfig(eos_token_id=[end, eot])
    toks = tokenize_examples([SINGLE], tok, max_length=64)
    assert stop_ids(model, tok, toks) == [end, eot]
    model.generation_config = GenerationConfig(eos_token_id=end)
    assert stop_ids(model, tok, toks) == [end, eot]  # the end-of-turn the responses learned stops it too
