"""Records to conversations: the one parser of every record schema (which schema a record is in is
`mint.records.detect_schema`'s rule). Pure Python, no torch.

A record becomes `Parsed`: the prompt as chat messages (the context before the response), the
response (the last assistant turn), the indices of the earlier assistant turns that
``assistant_turns: all`` learns too, and for a plain-text prompt/completion record its raw prompt.

- ``alpaca``: ``instruction``, optional ``input`` (joined to it after a blank line), ``output``;
  optional ``system`` (a system message first) and ``history`` (earlier ``[instruction,
  response]`` pairs, as LLaMA-Factory writes them: earlier turns of the conversation).
- ``chat`` (OpenAI): ``messages``, each ``{"role", "content"}``; ``content`` is a string or a list
  of parts whose text parts are joined with a newline (other parts are an error); ``developer``
  reads as ``system``. Assistant messages with ``tool_calls`` and ``tool`` messages are context:
  kept for the chat template, never learned.
- ``sharegpt``: ``conversations``, each ``{"from", "value"}`` (or ``{"role", "content"}``), with
  the tags of `SHAREGPT_ROLES`; an unknown tag is an error; optional top-level ``system``.
- ``prompt_completion``: ``prompt`` and ``completion`` strings (the prompt is kept verbatim under
  ``template: auto``), or TRL's conversational form, both lists of messages, of which only the
  completion's assistant turns are learned.

The response is the last learnable assistant turn (no tool calls); messages after it are ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["BadRecord", "Parsed", "parse_record", "conversation", "SHAREGPT_ROLES"]

# ShareGPT role tags -> chat roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}
_KEPT_KEYS = ("tool_calls", "tool_call_id")  # passed on to the chat template besides role and content


class BadRecord(Exception):
    """What is wrong with one record; the reader adds the file and line."""


@dataclass(frozen=True)
class Parsed:
    prompt_messages: tuple[dict, ...]
    response: str
    prompt_text: str | None = None  # the raw prompt of a plain-text prompt/completion record
    learned: tuple[int, ...] = ()  # indices in prompt_messages of earlier assistant turns `all` learns


def need_str(record: dict, key: str, *, optional: bool = False, nonempty: bool = False) -> str:
    value = record.get(key)
    if value is None:
        if optional:
            return ""
        raise BadRecord(f"missing key {key!r}" + (" (null)" if key in record else ""))
    if not isinstance(value, str):
        raise BadRecord(f"{key!r} must be a string, found {type(value).__name__} ({json.dumps(value, default=str)[:60]})")
    if nonempty and not value.strip():
        raise BadRecord(f"{key!r} is empty")
    return value


def _text(content, where: str) -> str:
    """A message's content: a string, or the text parts of a list joined with newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRecord(f"{where} must be a string (or a list of text parts), found {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type", "text" if "text" in part else None) if isinstance(part, dict) else None
        if kind != "text":
            shown = repr(kind) if kind else type(part).__name__
            raise BadRecord(f"{where}[{j}] is a {shown} part; mint reads text only: drop that part (or the "
                            "record), or give its content as text")
        if not isinstance(part.get("text"), str):
            raise BadRecord(f"{where}[{j}].text must be a string")
        texts.append(part["text"])
    return "\n".join(texts)


def _learnable(m: dict) -> bool:
    return m["role"] == "assistant" and not m.get("tool_calls")


def _openai(messages, key: str) -> tuple[list[dict], list[str]]:
    """OpenAI-style messages normalised (role, text content, tool keys), and their labels for errors."""
    if not isinstance(messages, list) or not messages:
        raise BadRecord(f"{key!r} must be a non-empty list of {{'role', 'content'}} objects")
    out = []
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or ("content" not in m and not m.get("tool_calls")):
            raise BadRecord(f"{key}[{k}] must be an object with 'role' and 'content'")
        if not isinstance(m["role"], str):
            raise BadRecord(f"{key}[{k}].role must be a string, found {type(m['role']).__name__}")
        role = "system" if m["role"] == "developer" else m["role"]
        content = m.get("content")
        if content is None and (m.get("tool_calls") or role == "tool"):
            content = ""  # a tool call or a tool result may come without text
        msg = {"role": role, "content": _text(content, f"{key}[{k}].content")}
        msg.update({x: m[x] for x in _KEPT_KEYS if m.get(x) is not None})
        out.append(msg)
    return out, [f"{key}[{k}]" for k in range(len(out))]


def _sharegpt(record: dict) -> tuple[list[dict], list[str]]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRecord("'conversations' must be a non-empty list of {'from', 'value'} objects")
    out, labels = [], []
    system = need_str(record, "system", optional=True)
    if system.strip():
        out.append({"role": "system", "content": system})
        labels.append("system")
    for k, t in enumerate(turns):
        tag_key, text_key = ("from", "value") if isinstance(t, dict) and "from" in t else ("role", "content")
        if not isinstance(t, dict) or tag_key not in t or text_key not in t:
            raise BadRecord(f"conversations[{k}] must be an object with 'from' and 'value'")
        tag = t[tag_key]
        role = SHAREGPT_ROLES.get(tag.lower()) if isinstance(tag, str) else None
        if role is None:
            raise BadRecord(f"conversations[{k}] has the unknown role tag {tag!r}; use one of "
                            f"{', '.join(SHAREGPT_ROLES)} (rename the tag in the data)")
        out.append({"role": role, "content": _text(t[text_key], f"conversations[{k}].{text_key}")})
        labels.append(f"conversations[{k}]")
    return out, labels


def _alpaca(record: dict) -> tuple[list[dict], list[str]]:
    instruction = need_str(record, "instruction", nonempty=True)
    inp = need_str(record, "input", optional=True)
    output = need_str(record, "output", nonempty=True)
    out, labels = [], []
    system = need_str(record, "system", optional=True)
    if system.strip():
        out.append({"role": "system", "content": system})
        labels.append("system")
    history = record.get("history") or []
    if not isinstance(history, list):
        raise BadRecord(f"'history' must be a list of [instruction, response] pairs, found {type(history).__name__}")
    for k, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise BadRecord(f"history[{k}] must be a pair of strings [instruction, response]")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        labels += [f"history[{k}][0]", f"history[{k}][1]"]
    out.append({"role": "user", "content": f"{instruction}\n\n{inp}" if inp.strip() else instruction})
    out.append({"role": "assistant", "content": output})
    return out, labels + ["instruction", "output"]


def _split(messages: list[dict], labels: list[str], *, first_learnable: int = 0,
           assistant_turns: str = "all") -> Parsed:
    """Prompt, response (the last learnable assistant turn at or after `first_learnable`), learned turns."""
    turns = [k for k, m in enumerate(messages) if k >= first_learnable and _learnable(m)]
    if not turns:
        raise BadRecord("no assistant message; the last assistant message is the response to learn")
    last = turns[-1]
    if not messages[last]["content"].strip():
        raise BadRecord(f"{labels[last]} (the response) is empty")
    if assistant_turns == "last" and last > 0 and _learnable(messages[last - 1]):
        raise BadRecord(f"{labels[last - 1]} and {labels[last]} are two assistant turns in a row; with "
                        "assistant_turns 'last' the response must follow a user (or tool) turn: merge the two "
                        "turns, or learn both with assistant_turns 'all'")
    learned = tuple(k for k in turns[:-1] if messages[k]["content"].strip())
    return Parsed(tuple(messages[:last]), messages[last]["content"], None, learned)


def _prompt_completion(record: dict, assistant_turns: str) -> Parsed:
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, list) and not isinstance(completion, list):
        prompt_text = need_str(record, "prompt")
        completion_text = need_str(record, "completion", nonempty=True)
        return Parsed(({"role": "user", "content": prompt_text},), completion_text, prompt_text, ())
    # TRL's conversational prompt/completion: the completion's assistant turns are what is learned
    if prompt is None or completion is None:
        raise BadRecord(f"missing key {'prompt' if prompt is None else 'completion'!r}")
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    p, p_labels = _openai(prompt, "prompt")
    c, c_labels = _openai(completion, "completion")
    try:
        return _split(p + c, p_labels + c_labels, first_learnable=len(p), assistant_turns=assistant_turns)
    except BadRecord as e:
        if "no assistant message" in str(e):
            raise BadRecord("'completion' holds no assistant message; its assistant turns are what is learned") from None
        raise


def parse_record(record: dict, schema: str, *, assistant_turns: str = "all") -> Parsed:
    """The record as a conversation (see the module docstring); `BadRecord` says what is wrong.
    ``assistant_turns='last'`` refuses two assistant turns in a row before the response."""
    if schema == "prompt_completion":
        return _prompt_completion(record, assistant_turns)
    if schema == "alpaca":
        messages, labels = _alpaca(record)
    elif schema == "sharegpt":
        messages, labels = _sharegpt(record)
    else:
        messages, labels = _openai(record.get("messages"), "messages")
    return _split(messages, labels, assistant_turns=assistant_turns)


def conversation(parsed: Parsed) -> list[dict]:
    """The whole conversation as chat messages: the prompt, then the response as an assistant turn."""
    return [dict(m) for m in parsed.prompt_messages] + [{"role": "assistant", "content": parsed.response}]
