"""Instruction data: records -> examples -> token ids -> batches in the SFT and PT views.

Three record schemas are read (the schema of a file is taken from its first record and every
record must follow it):

- ``alpaca``: ``instruction``, optional ``input``, ``output``;
- ``chat``: ``messages``, a list of ``{"role", "content"}``; the last assistant message is the
  response, the messages before it are the prompt (any after it are ignored);
- ``prompt_completion``: ``prompt``, ``completion``.

Other fields are kept untouched in ``Example.record``.

Rendering (``template``):

- ``chat``: the tokenizer's chat template with ``add_generation_prompt=True``; an Alpaca record is
  one user message, ``instruction`` followed by a blank line and ``input`` when there is an input;
  a prompt/completion record is one user message holding the prompt.
- ``plain``: every prompt message as ``"### {Role}:\\n{content}\\n\\n"`` (Role capitalised) followed
  by ``"### Assistant:\\n"``; a prompt/completion record keeps its prompt text verbatim.
- ``auto`` (default): ``chat`` when the tokenizer has a chat template, else ``plain``; a
  prompt/completion record is always kept verbatim under ``auto`` (its prompt is already text).

Tokenization: the rendered prompt and the response are tokenized separately (no special tokens
added) and concatenated, and the response ends with EOS, so the response ids are the same in
both views:

- SFT view: ``prompt_ids + response_ids``, labels on the response only;
- PT view: ``[bos_id] + response_ids``, labels on the response only.

"Uses BOS": the prompt starts with BOS only when the tokenizer itself adds BOS on ``encode``
(Llama-2/3 style) and the rendered prompt does not already start with it. The PT view always
has one start token so that *every* response token has a context and is scored in both views
(which keeps ``L_SFT = L_PT + L_IFL`` exact): the tokenizer's BOS token if it has one, else its
EOS token (GPT-2 style). See `collate_ids`. SmolLM2-135M-Instruct does not add BOS on encode and
its BOS is ``<|im_start|>``, so its PT view is ``<|im_start|>`` followed by the response.

Truncation to ``max_length`` keeps the response: the prompt is cut from the left (down to one
token); only when the response alone does not fit is the response cut from the right (it then
loses its EOS). Truncated examples are counted and logged. A prompt that alone fills
``max_length`` leaves no room for a response and is an error, unless ``long_prompts="truncate"``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mint._io import sha256_bytes, sha256_file
from mint.choices import LONG_PROMPTS, SCHEMAS, TEMPLATES
from mint.errors import MintError
from mint.records import SCHEMA_HINT, detect_schema

__all__ = [
    "SCHEMAS",
    "TEMPLATES",
    "Example",
    "TokenizedExample",
    "load_examples",
    "detect_schema",
    "render_prompt",
    "tokenize_examples",
    "collate",
    "collate_ids",
    "dataset_fingerprint",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that cross entropy skips (the transformers convention)
_TOKENIZE_CHUNK = 1024  # examples per tokenizer call: large enough to amortise the call, small enough for a bar


@dataclass(frozen=True)
class Example:
    """One instruction example. ``prompt_messages`` is the prompt as chat messages (for every
    schema); ``prompt_text`` is the raw prompt of a prompt/completion record, else None."""

    index: int
    schema: str
    prompt_messages: tuple[dict, ...]
    response: str
    record: dict = field(repr=False)
    prompt_text: str | None = None


@dataclass(frozen=True)
class TokenizedExample:
    index: int
    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    truncated: bool = False  # prompt or response was cut to fit max_length
    response_truncated: bool = False  # the response itself was cut (it then has no EOS)


# ---------------------------------------------------------------------------------------------
# Records -> examples


def _line_of(path: Path, i: int) -> str:
    """Where record i sits, for error messages: the line for JSON Lines, else the record index."""
    try:
        from mint.records import _read_text  # the same decoding the reader used

        text = _read_text(path)
    except Exception:  # the location is a courtesy; never let it hide the real error
        return f"{path}, record {i}"
    if text.lstrip().startswith("["):
        return f"{path}, record {i}"
    n = -1
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            n += 1
            if n == i:
                return f"{path}, line {lineno} (record {i})"
    return f"{path}, record {i}"


class _BadRecord(Exception):
    pass


def _need_str(record: dict, key: str, *, optional: bool = False, nonempty: bool = False) -> str:
    if key not in record or (optional and record[key] is None):
        if optional:
            return ""
        raise _BadRecord(f"missing key {key!r}")
    value = record[key]
    if not isinstance(value, str):
        raise _BadRecord(f"{key!r} must be a string, found {type(value).__name__} ({json.dumps(value)[:60]})")
    if nonempty and not value.strip():
        raise _BadRecord(f"{key!r} is empty")
    return value


def _parse(record: dict, schema: str) -> tuple[tuple[dict, ...], str, str | None]:
    if schema == "alpaca":
        instruction = _need_str(record, "instruction", nonempty=True)
        inp = _need_str(record, "input", optional=True)
        output = _need_str(record, "output", nonempty=True)
        content = f"{instruction}\n\n{inp}" if inp.strip() else instruction
        return ({"role": "user", "content": content},), output, None
    if schema == "prompt_completion":
        prompt = _need_str(record, "prompt")
        completion = _need_str(record, "completion", nonempty=True)
        return ({"role": "user", "content": prompt},), completion, prompt
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRecord("'messages' must be a non-empty list of {'role', 'content'} objects")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise _BadRecord(f"messages[{k}] must be an object with 'role' and 'content'")
        if not isinstance(m["role"], str):
            raise _BadRecord(f"messages[{k}].role must be a string, found {type(m['role']).__name__}")
        if not isinstance(m["content"], str):
            raise _BadRecord(f"messages[{k}].content must be a string, found {type(m['content']).__name__}")
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise _BadRecord("no assistant message; the last assistant message is the response to learn")
    if not messages[last]["content"].strip():
        raise _BadRecord(f"messages[{last}] (the response) is empty")
    prompt = tuple({"role": m["role"], "content": m["content"]} for m in messages[:last])
    return prompt, messages[last]["content"], None


def load_examples(path: str | os.PathLike, *, schema: str = "auto") -> list[Example]:
    """Read a JSON / JSON Lines file (optionally .gz) into examples, in file order.

    ``schema`` is ``auto`` (taken from the first record) or one of `SCHEMAS`; every record must
    follow it. Bad records raise `MintError` naming the file, line and key.
    """
    from mint.records import read_records

    path = Path(path)
    if schema != "auto" and schema not in SCHEMAS:
        raise MintError(f"unknown schema {schema!r}; use one of auto, {', '.join(SCHEMAS)}")
    records = read_records(path)
    if schema == "auto":
        schema = detect_schema(records[0])
        if schema is None:
            raise MintError(f"{_line_of(path, 0)}: none of the three schemas fits the keys {sorted(records[0])}; "
                            f"{SCHEMA_HINT}")
    examples, ignored_tail = [], 0
    for i, record in enumerate(records):
        found = detect_schema(record)
        try:
            if found is None:
                raise _BadRecord(f"none of the three schemas fits the keys {sorted(record)}; {SCHEMA_HINT}")
            if found != schema:
                raise _BadRecord(f"a {found} record in {'an' if schema[0] in 'aeiou' else 'a'} {schema} file; "
                                 "use one schema per file")
            prompt, response, prompt_text = _parse(record, schema)
        except _BadRecord as e:
            raise MintError(f"{_line_of(path, i)}: {e}; fix or remove this record") from None
        if schema == "chat":
            ignored_tail += int(record["messages"][-1]["role"] != "assistant")
        examples.append(Example(i, schema, prompt, response, record, prompt_text))
    if ignored_tail:
        log.info("%s: %d chat records have messages after their last assistant message; those are ignored",
                 path, ignored_tail)
    return examples


# ---------------------------------------------------------------------------------------------
# Examples -> token ids


def _plain_prompt(example: Example) -> str:
    if example.prompt_text is not None:
        return example.prompt_text
    parts = [f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in example.prompt_messages]
    return "".join(parts) + "### Assistant:\n"


def _resolve_template(template: str, tokenizer) -> str:
    if template not in TEMPLATES:
        raise MintError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if template == "chat" and not has_chat:
        raise MintError("template 'chat' was asked for but the tokenizer has no chat template; use 'plain' or 'auto'")
    if template == "auto":
        return "chat" if has_chat else "plain"
    return template


def render_prompt(example: Example, tokenizer, *, template: str = "auto") -> str:
    """The prompt text the model sees before the response (see the module docstring)."""
    mode = _resolve_template(template, tokenizer)
    if mode == "plain" or (template == "auto" and example.prompt_text is not None):
        return _plain_prompt(example)
    return tokenizer.apply_chat_template(list(example.prompt_messages), tokenize=False, add_generation_prompt=True)


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def collate_ids(tokenizer) -> dict[str, int]:
    """``pad_id`` and ``bos_id`` for `collate`: ``bos_id`` is the PT view's start token (BOS, or
    EOS when the tokenizer has no BOS); ``pad_id`` is the pad token, else EOS."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if bos is None or pad is None:
        raise MintError("the tokenizer has neither a BOS nor an EOS token; mint needs one of them")
    return {"pad_id": int(pad), "bos_id": int(bos)}


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer,
    *,
    max_length: int,
    template: str = "auto",
    long_prompts: str = "error",
    progress: bool = False,
) -> list[TokenizedExample]:
    """Token ids of prompt and response, tokenized separately, truncated to ``max_length``.

    ``long_prompts``: what to do with a prompt that alone fills ``max_length``: ``error`` (the
    default: such a record is bad input) or ``truncate`` (cut it from the left like any other
    prompt; the example then counts as truncated). ``progress``: a progress bar (about 1 ms per
    example for SmolLM2's tokenizer on one CPU core: most of a minute for 52,000 records).
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise MintError(f"max_length must be an integer >= 2, got {max_length!r}")
    if long_prompts not in LONG_PROMPTS:
        raise MintError(f"long_prompts must be one of {', '.join(LONG_PROMPTS)}, got {long_prompts!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise MintError("the tokenizer has no EOS token; the response must end with one")
    bos = tokenizer.bos_token_id
    add_bos = _adds_bos(tokenizer)
    prompts = [_render_or_explain(ex, tokenizer, template) for ex in examples]
    prompt_ids, response_ids = _token_ids(tokenizer, prompts, [ex.response for ex in examples], progress)
    out, too_long = [], []
    for ex, p, r in zip(examples, prompt_ids, response_ids):
        p = list(p)
        if add_bos and (not p or p[0] != bos):
            p = [bos] + p
        r = list(r) + [eos]
        if len(p) >= max_length and long_prompts == "error":
            too_long.append((ex.index, len(p)))
            continue
        out.append(_fit(ex.index, p, r, max_length))
    if too_long:
        shown = ", ".join(f"record {i} ({n} tokens)" for i, n in too_long[:5])
        raise MintError(
            f"{len(too_long)} record(s) have a prompt that alone fills max_length={max_length}, leaving no room "
            f"for the response: {shown}{' ...' if len(too_long) > 5 else ''}; raise max_length, remove those records, "
            "or cut such prompts from the left too (long_prompts='truncate')"
        )
    n_trunc = sum(t.truncated for t in out)
    if n_trunc:
        log.warning("%d of %d examples truncated to max_length=%d (prompt cut from the left; %d responses cut "
                    "from the right too)", n_trunc, len(out), max_length, sum(t.response_truncated for t in out))
    return out


def _render_or_explain(example: Example, tokenizer, template: str) -> str:
    """`render_prompt`, with a chat template's own error turned into a `MintError` naming the record."""
    try:
        return render_prompt(example, tokenizer, template=template)
    except MintError:
        raise
    except Exception as e:  # e.g. a chat template that rejects a system message or role order
        raise MintError(f"record {example.index}: the tokenizer's chat template failed ({type(e).__name__}: {e}); "
                        "fix the record's messages or use template 'plain'") from e


def _token_ids(tokenizer, prompts: list[str], responses: list[str], progress: bool) -> tuple[list, list]:
    """Token ids of the prompts and of the responses, no special tokens added. Batched calls to
    the fast tokenizer (one Rust call per chunk instead of one per example); chunks only so that
    the progress bar moves."""
    from tqdm.auto import tqdm

    prompt_ids, response_ids = [], []
    chunk = _TOKENIZE_CHUNK
    with tqdm(total=len(prompts), unit="ex", desc="tokenize", disable=not progress) as bar:
        for start in range(0, len(prompts), chunk):
            part = slice(start, start + chunk)
            prompt_ids += tokenizer(prompts[part], add_special_tokens=False)["input_ids"]
            response_ids += tokenizer(responses[part], add_special_tokens=False)["input_ids"]
            bar.update(len(prompts[part]))
    return prompt_ids, response_ids


def _fit(index: int, p: list[int], r: list[int], max_length: int) -> TokenizedExample:
    """Prompt ids ``p`` and response ids ``r`` (with EOS) cut to ``max_length`` together: the
    prompt from the left (down to one token), the response from the right only when it alone
    does not fit."""
    truncated = response_cut = False
    if len(p) + len(r) > max_length:
        truncated = True
        # The response must also fit the PT view (start token + response) and keep one prompt token.
        if len(r) > max_length - 1:
            r = r[: max_length - 1]
            response_cut = True
        keep = max(1, max_length - len(r))
        p = p[len(p) - keep:]
    return TokenizedExample(index, tuple(p), tuple(r), truncated, response_cut)


def collate(tokenized: Sequence[TokenizedExample], view: str, *, pad_id: int, bos_id: int | None) -> dict[str, Any]:
    """A right-padded batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 except on the
    response tokens). ``view`` is ``sft`` (prompt + response) or ``pt`` (start token + response)."""
    import torch

    if view not in ("sft", "pt"):
        raise ValueError(f"view must be 'sft' or 'pt', got {view!r}")
    if view == "pt" and bos_id is None:
        raise ValueError("the PT view needs a start token; pass bos_id from collate_ids(tokenizer)")
    rows, labels = [], []
    for t in tokenized:
        head = list(t.prompt_ids) if view == "sft" else [bos_id]
        rows.append(head + list(t.response_ids))
        labels.append([IGNORE_INDEX] * len(head) + list(t.response_ids))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    label_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
        label_t[k, : len(r)] = torch.tensor(lab, dtype=torch.long)
        mask[k, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}


def dataset_fingerprint(path: str | os.PathLike, settings: dict) -> str:
    """sha256 of the file bytes and the rendering settings (schema, template, max_length, tokenizer...)."""
    blob = json.dumps({"file_sha256": sha256_file(path), "settings": settings}, sort_keys=True, default=str)
    return sha256_bytes(blob.encode("utf-8"))
