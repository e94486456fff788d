"""mint.model.schemas through load_examples: equivalent records of every schema become the same
conversation; bad records name the file, line and key."""
from __future__ import annotations

import json

import pytest

from mint.errors import MintError
from mint.model.data import load_examples

SYSTEM = {"role": "system", "content": "be brief"}
CONVERSATION = [SYSTEM, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "add\n\n1 2"}, {"role": "assistant", "content": "3"}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


EQUIVALENT = {
    "alpaca": {"system": "be brief", "history": [["hi", "hello"]], "instruction": "add", "input": "1 2", "output": "3"},
    "chat": {"messages": CONVERSATION},
    "sharegpt": {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"},
                                   {"from": "gpt", "value": "hello"}, {"from": "human", "value": "add\n\n1 2"},
                                   {"from": "gpt", "value": "3"}]},
    "sharegpt_system_key": {"system": "be brief", "conversations": [
        {"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"},
        {"from": "human", "value": "add\n\n1 2"}, {"from": "gpt", "value": "3"}]},
    "chat_parts": {"messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                                *CONVERSATION[1:3],
                                {"role": "user", "content": [{"type": "text", "text": "add\n"}, {"text": "1 2"}]},
                                CONVERSATION[4]]},
}


@pytest.mark.parametrize("name", sorted(EQUIVALENT))
def test_every_schema_reads_into_the_same_conversation(tmp_path, name):
    (ex,) = load_examples(write_jsonl(tmp_path / f"{name}.jsonl", [EQUIVALENT[name]]))
    assert ex.schema == {"chat_parts": "chat", "sharegpt_system_key": "sharegpt"}.get(name, name)
    assert list(ex.prompt_messages) == CONVERSATION[:-1]
    assert ex.response == "3" and ex.learned == (2,)  # the earlier assistant turn is learned under `all`
    assert ex.record == EQUIVALENT[name]


def test_trl_conversational_prompt_completion_learns_the_completion_only(tmp_path):
    record = {"prompt": CONVERSATION[:-1], "completion": [CONVERSATION[-1]]}
    (ex,) = load_examples(write_jsonl(tmp_path / "pc.jsonl", [record]))
    assert ex.schema == "prompt_completion" and ex.prompt_text is None
    assert list(ex.prompt_messages) == CONVERSATION[:-1] and ex.response == "3"
    assert ex.learned == ()  # the prompt's assistant turn is context, as TRL trains on the completion only
    two = {"prompt": [CONVERSATION[1]], "completion": [CONVERSATION[2], {"role": "user", "content": "more"},
                                                       {"role": "assistant", "content": "ok"}]}
    (ex,) = load_examples(write_jsonl(tmp_path / "pc2.jsonl", [two]))
    assert ex.learned == (1,) and ex.response == "ok"


def test_tool_turns_are_context(tmp_path):
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}
    record = {"messages": [{"role": "user", "content": "add 1 and 2"},
                           {"role": "assistant", "content": None, "tool_calls": [call]},
                           {"role": "tool", "tool_call_id": "c1", "content": "3"},
                           {"role": "assistant", "content": "it is 3"}]}
    (ex,) = load_examples(write_jsonl(tmp_path / "t.jsonl", [record]))
    assert ex.response == "it is 3" and ex.learned == ()
    assert ex.prompt_messages[1] == {"role": "assistant", "content": "", "tool_calls": [call]}
    assert ex.prompt_messages[2] == {"role": "tool", "content": "3", "tool_call_id": "c1"}


def test_alpaca_without_system_or_history_is_unchanged(tmp_path):
    (ex,) = load_examples(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "add", "input": "1 2", "output": "3",
                                                              "system": "", "history": []}]))
    assert ex.prompt_messages == ({"role": "user", "content": "add\n\n1 2"},) and ex.learned == ()


@pytest.mark.parametrize("record, pattern", [
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}]},
     r"line 1 \(record 0\): conversations\[1\] has the unknown role tag 'bot'; use one of human, user, gpt"),
    ({"conversations": [{"from": "human", "value": "hi"}]}, "no assistant message"),
    ({"conversations": "hi"}, "'conversations' must be a non-empty list"),
    ({"conversations": [{"from": "human"}]}, r"conversations\[0\] must be an object with 'from' and 'value'"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                   {"role": "assistant", "content": "a cat"}]},
     r"messages\[0\].content\[0\] is a 'image_url' part; mint reads text only"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}, {"role": "assistant", "content": "x"}]},
     r"messages\[0\].content\[0\].text must be a string"),
    ({"instruction": "a", "output": "b", "history": [["only one"]]}, r"history\[0\] must be a pair of strings"),
    ({"instruction": "a", "output": "b", "history": "no"}, "'history' must be a list"),
    ({"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "user", "content": "x"}]},
     "'completion' holds no assistant message"),
])
def test_bad_records(tmp_path, record, pattern):
    with pytest.raises(MintError, match=pattern):
        load_examples(write_jsonl(tmp_path / "bad.jsonl", [record]))


def test_two_assistant_turns_in_a_row(tmp_path):
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                           {"role": "assistant", "content": "again"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION}, record])
    with pytest.raises(MintError, match=r"line 2 \(record 1\): messages\[1\] and messages\[2\] are two assistant turns "
                                        r"in a row; with assistant_turns 'last'"):
        load_examples(path, assistant_turns="last")
    assert load_examples(path)[1].learned == (1,)  # `all` learns both
    with pytest.raises(MintError, match="assistant_turns must be one of all, last"):
        load_examples(path, assistant_turns="every")


def test_auto_names_the_schema_it_detected(tmp_path, caplog):
    with caplog.at_level("INFO"):
        load_examples(write_jsonl(tmp_path / "s.jsonl", [EQUIVALENT["sharegpt"]]))
    assert "1 records, jsonl format, sharegpt schema (detected from the first record)" in caplog.text
