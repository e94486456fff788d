"""Coreset records in the formats other trainers read, matching what mint learned.

- OpenAI ``messages`` (`to_messages`): the conversation up to the response; with
  ``assistant_turns='last'`` the earlier assistant messages carry ``"train": false``, which
  axolotl reads (``message_field_training: train``).
- LLaMA-Factory's ShareGPT format (`to_sharegpt`, `llamafactory_entry`): ``conversations`` of
  ``from``/``value`` with the tags of its documented mapping (human, gpt, observation,
  function_call) and the system prompt in its own column; normalised so that LLaMA-Factory keeps
  the record (one leading system prompt, turns alternating, same-side turns merged, ending with
  the response); `llamafactory_drops` says whether it would still drop one.
- TRL's conversational prompt/completion (`to_trl`): one row per learned assistant turn (the
  prompt is the conversation before it, the completion the turn), since TRL learns only the
  completion; a plain-text prompt/completion record stays plain text.
- axolotl's ``chat_template`` stanza (`axolotl_stanza`): ``roles_to_train: [assistant]`` and
  ``train_on_eos: turn`` (mint learns each learned turn's end-of-turn token).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mint.errors import MintError

__all__ = ["to_messages", "to_sharegpt", "to_trl", "llamafactory_drops", "llamafactory_entry", "axolotl_stanza",
           "merge_dataset_info", "SHAREGPT_TAGS"]

# LLaMA-Factory's ShareGPT tags (its documented defaults) for the roles mint writes
SHAREGPT_TAGS = {"user": "human", "assistant": "gpt", "tool": "observation", "function_call": "function_call"}
_USER_SIDE, _MODEL_SIDE = ("human", "observation"), ("gpt", "function_call")


def _parsed(record: dict, where: str, assistant_turns: str):
    from mint.model.schemas import BadRecord, parse_record
    from mint.records import record_schema

    schema = record_schema(record, where)
    try:
        return parse_record(record, schema, assistant_turns=assistant_turns)
    except BadRecord as e:
        raise MintError(f"{where}: {e}; fix or remove this record") from None


def to_messages(record: dict, where: str = "record", *, assistant_turns: str = "all") -> list[dict]:
    """The record as OpenAI-style chat messages, the last one the response (see the module docstring)."""
    from mint.model.schemas import conversation

    parsed = _parsed(record, where, assistant_turns)
    messages = conversation(parsed)
    if assistant_turns == "last":
        for m in messages[:-1]:
            if m["role"] == "assistant" and not m.get("tool_calls"):
                m["train"] = False
    return messages


def _function_call(m: dict) -> str:
    calls = []
    for call in m["tool_calls"]:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        args = fn.get("arguments")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            pass
        calls.append({"name": fn.get("name"), "arguments": args})
    return json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)


def to_sharegpt(record: dict, where: str = "record", *, assistant_turns: str = "all") -> dict[str, Any]:
    """``{"conversations": [{"from", "value"}...], "system": str}`` normalised for LLaMA-Factory."""
    from mint.model.schemas import conversation

    system, turns = [], []
    for m in conversation(_parsed(record, where, assistant_turns)):
        if m["role"] == "system" and not turns:
            system.append(m["content"])
            continue
        tag = "function_call" if m.get("tool_calls") else SHAREGPT_TAGS.get(m["role"], "human")
        value = _function_call(m) if m.get("tool_calls") else m["content"]
        if turns and turns[-1]["from"] == tag and tag in ("human", "gpt", "observation"):
            turns[-1]["value"] += "\n\n" + value  # LLaMA-Factory wants the sides to alternate
        else:
            turns.append({"from": tag, "value": value})
    row: dict[str, Any] = {"conversations": turns}
    if system:
        row["system"] = "\n\n".join(system)
    return row


def llamafactory_drops(row: dict) -> bool:
    """Whether LLaMA-Factory's ShareGPT converter would drop the row: the sides must alternate,
    a user-side turn first, and the count must be even."""
    turns = row["conversations"]
    sides = (_USER_SIDE, _MODEL_SIDE)
    return len(turns) % 2 != 0 or any(t["from"] not in sides[k % 2] for k, t in enumerate(turns))


def to_trl(record: dict, where: str = "record", *, assistant_turns: str = "all") -> list[dict[str, Any]]:
    """TRL prompt/completion rows of the record: one per learned assistant turn."""
    from mint.model.schemas import conversation

    parsed = _parsed(record, where, assistant_turns)
    if parsed.prompt_text is not None:
        return [{"prompt": parsed.prompt_text, "completion": parsed.response}]
    messages = conversation(parsed)
    turns = (list(parsed.learned) if assistant_turns == "all" else []) + [len(messages) - 1]
    return [{"prompt": messages[:k], "completion": [messages[k]]} for k in turns]


def llamafactory_entry(file_name: str, schema: str, *, columns: tuple[str, ...] = ()) -> dict[str, Any]:
    """A LLaMA-Factory `dataset_info.json` entry for an exported file (path relative to the
    folder given as LLaMA-Factory's `dataset_dir`). ``columns``: optional Alpaca columns the
    records have (``system``, ``history``)."""
    if schema == "alpaca":
        mapping = {"prompt": "instruction", "query": "input", "response": "output"}
        mapping.update({c: c for c in ("system", "history") if c in columns})
        return {"file_name": file_name, "columns": mapping}
    if schema == "sharegpt":
        return {"file_name": file_name, "formatting": "sharegpt",
                "columns": {"messages": "conversations", "system": "system"},
                "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                         "observation_tag": "observation", "function_tag": "function_call"}}
    raise MintError(f"no LLaMA-Factory entry for schema {schema!r}; export the sharegpt variant")


def axolotl_stanza(path: str | os.PathLike, schema: str, *, assistant_turns: str = "all") -> dict[str, Any]:
    """One item of an axolotl `datasets:` list for an exported JSONL file, training what mint learned."""
    if schema == "alpaca":
        return {"path": str(path), "ds_type": "json", "type": "alpaca"}
    if schema == "messages":
        stanza = {"path": str(path), "ds_type": "json", "type": "chat_template", "field_messages": "messages",
                  "message_property_mappings": {"role": "role", "content": "content"},
                  "roles_to_train": ["assistant"], "train_on_eos": "turn"}
        if assistant_turns == "last":
            stanza["message_field_training"] = "train"  # the earlier assistant turns carry "train": false
        return stanza
    raise MintError(f"no axolotl stanza for schema {schema!r}; export the messages variant")


def merge_dataset_info(path: Path, entries: dict[str, Any]) -> list[str]:
    """Write ``entries`` into the LLaMA-Factory ``dataset_info.json`` at ``path``, keeping every
    other entry of an existing file; returns the names of the entries it replaced."""
    from mint._io import atomic_write_json

    info: dict[str, Any] = {}
    if path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MintError(f"{path} exists but is not valid JSON ({e}); fix it or export to another folder") from e
        if not isinstance(info, dict):
            raise MintError(f"{path} is not a LLaMA-Factory dataset_info.json (a JSON object of entries); "
                            "fix it or export to another folder")
    replaced = sorted(k for k in entries if k in info)
    info.update(entries)
    atomic_write_json(path, info)
    return replaced
