"""Instruction data: records -> examples -> token ids -> batches in the SFT and PT views.

Records are read by `mint.records.read_records` (every format of `mint.sources`) and parsed by
`mint.model.schemas` (Alpaca with system and history, OpenAI chat, ShareGPT, prompt/completion
and TRL's conversational form); the schema of a source is taken from its first record (``auto``,
logged) and every record must follow it. Other fields are kept untouched in ``Example.record``.

Text pieces come from `mint.model.turns` (chat template or plain rendering; the response ends
with what the chat template writes after an assistant turn, its end-of-turn token, or with EOS).
``assistant_turns``: ``all`` (the default) learns every assistant turn of a conversation, as
LESS/open-instruct, LLaMA-Factory and axolotl do; ``last`` only the last one. Single-turn
records give the same ids either way.

Tokenization: every piece is tokenized on its own (no special tokens added) and the pieces are
concatenated, so the learned ids are the same in both views:

- SFT view: ``context_0 + turn_0 + context_1 + turn_1 + ...``, labels on the turns only;
- PT view: ``[bos_id] + turn_0 + turn_1 + ...``, labels on the turns only.

So ``L_SFT`` and ``L_PT`` are means over the same ids and ``L_IFL = L_SFT - L_PT`` holds exactly.
"Uses BOS": the first context starts with BOS only when the tokenizer itself adds BOS on
``encode`` (Llama-2/3 style) and the rendered text does not already start with it. The PT view
always has one start token so that *every* learned token has a context and is scored in both
views: the tokenizer's BOS token if it has one, else its EOS token (GPT-2 style). See
`collate_ids`. SmolLM2-135M-Instruct does not add BOS on encode and its BOS is ``<|im_start|>``,
so its PT view is ``<|im_start|>`` followed by the response.

Truncation to ``max_length`` keeps the learned ids: the first context is cut from the left (down
to one token); a conversation still too long loses its earliest turns (context and response, from
both views); only when the last turn alone does not fit is its response cut from the right (it
then loses its end-of-turn). Truncated examples are counted and logged. A first context that
alone fills ``max_length`` leaves no room for a response and is an error, unless
``long_prompts="truncate"``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Any, Sequence

from mint._io import sha256_bytes
from mint.choices import ASSISTANT_TURNS, LONG_PROMPTS, SCHEMAS, TEMPLATES
from mint.errors import MintError
from mint.model.schemas import BadRecord, parse_record
from mint.model.turns import render_prompt, special_ids, turn_pieces
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
    "token_settings",
    "collate",
    "collate_ids",
    "dataset_fingerprint",
]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label value that cross entropy skips (the transformers convention)
_TOKENIZE_CHUNK = 1024  # examples per tokenizer call: large enough to amortise the call, small enough for a bar


@dataclass(frozen=True)
class Example:
    """One instruction example. ``prompt_messages`` is the conversation before the response (for
    every schema); ``prompt_text`` is the raw prompt of a plain-text prompt/completion record, else
    None; ``learned``: indices in ``prompt_messages`` of the earlier assistant turns that
    ``assistant_turns='all'`` learns too."""

    index: int
    schema: str
    prompt_messages: tuple[dict, ...]
    response: str
    record: dict = field(repr=False)
    prompt_text: str | None = None
    learned: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids as ``segments``: context, learned turn, context, learned turn, ... (an even
    number, a context first)."""

    index: int
    segments: tuple[tuple[int, ...], ...]
    truncated: bool = False  # ids were cut to fit max_length
    response_truncated: bool = False  # the last response itself was cut (it then has no end-of-turn)

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        """The context before the first learned turn."""
        return self.segments[0]

    @cached_property
    def response_ids(self) -> tuple[int, ...]:
        """Every learned id in order: the labels of both views and the PT view's body."""
        return tuple(chain.from_iterable(self.segments[1::2]))

    @property
    def sft_length(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def last_prompt_ids(self) -> tuple[int, ...]:
        """Everything before the last learned turn: the prompt to generate the last response from."""
        return tuple(chain.from_iterable(self.segments[:-1]))

    @property
    def last_response_ids(self) -> tuple[int, ...]:
        return self.segments[-1]


# ---------------------------------------------------------------------------------------------
# Records -> examples


def read_with_schema(path: str | os.PathLike, *, schema: str = "auto", assistant_turns: str = "all"):
    """(records, schema) of a data source: the settings checked, the records read, and with
    ``schema='auto'`` the schema of the first record (logged)."""
    from mint.records import read_records

    if schema != "auto" and schema not in SCHEMAS:
        raise MintError(f"unknown schema {schema!r}; use one of auto, {', '.join(SCHEMAS)}")
    if assistant_turns not in ASSISTANT_TURNS:
        raise MintError(f"assistant_turns must be one of {', '.join(ASSISTANT_TURNS)}, got {assistant_turns!r}")
    records = read_records(path)
    if schema == "auto":
        schema = detect_schema(records[0])
        if schema is None:
            raise MintError(f"{records.where(0)}: no schema fits the keys {sorted(records[0])}; {SCHEMA_HINT}")
        log.info("%s: %d records, %s format, %s schema (detected from the first record)", records.source,
                 len(records), records.format, schema)
    return records, schema


def parse_in_schema(record: dict, schema: str, *, assistant_turns: str):
    """One record of a file in `schema`, parsed; `BadRecord` (the problem, without the place)
    when it follows no schema, another one, or not its own rules."""
    found = detect_schema(record)
    if found is None:
        raise BadRecord(f"no schema fits the keys {sorted(record)}; {SCHEMA_HINT}")
    if found != schema:
        raise BadRecord(f"a {found} record in {'an' if schema[0] in 'aeiou' else 'a'} {schema} file; "
                        "use one schema per file")
    return parse_record(record, schema, assistant_turns=assistant_turns)


def load_examples(path: str | os.PathLike, *, schema: str = "auto", assistant_turns: str = "all") -> list[Example]:
    """Read a data source (any format of `mint.sources`) into examples, in order.

    ``schema`` is ``auto`` (taken from the first record, and logged) or one of `SCHEMAS`; every
    record must follow it. ``assistant_turns='last'`` refuses two assistant turns in a row before
    the response. Bad records raise `MintError` naming the file, line (or row) and key.
    """
    records, schema = read_with_schema(path, schema=schema, assistant_turns=assistant_turns)
    examples, ignored_tail = [], 0
    for i, record in enumerate(records):
        try:
            parsed = parse_in_schema(record, schema, assistant_turns=assistant_turns)
        except BadRecord as e:
            raise MintError(f"{records.where(i)}: {e}; fix or remove this record") from None
        ignored_tail += int(schema == "chat" and record["messages"][-1].get("role") != "assistant")
        examples.append(Example(i, schema, parsed.prompt_messages, parsed.response, record, parsed.prompt_text,
                                parsed.learned))
    if ignored_tail:
        log.info("%s: %d chat records have messages after their last assistant message; those are ignored",
                 records.source, ignored_tail)
    return examples


def token_settings(examples: Sequence[Example], *, template: str, max_length: int, long_prompts: str,
                   assistant_turns: str) -> dict[str, Any]:
    """The settings that decide the token ids, for fingerprints and resume checks: the detected
    schema, template, max_length, long_prompts, and ``assistant_turns`` only when some example has
    an earlier assistant turn (for single-turn data it changes nothing, and the fingerprints stay
    those of earlier versions)."""
    settings = {"schema": examples[0].schema if examples else None, "template": template,
                "max_length": max_length, "long_prompts": long_prompts}
    if any(ex.learned for ex in examples):
        settings["assistant_turns"] = assistant_turns
    return settings


# ---------------------------------------------------------------------------------------------
# Examples -> token ids


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
    assistant_turns: str = "all",
    progress: bool = False,
) -> list[TokenizedExample]:
    """Token ids of every context and learned turn, tokenized piece by piece, cut to ``max_length``.

    ``long_prompts``: what to do with a first context that alone fills ``max_length``: ``error``
    (the default: such a record is bad input) or ``truncate`` (cut it from the left like any other
    context; the example then counts as truncated). ``assistant_turns``: ``all`` or ``last`` (see
    the module docstring). ``progress``: a progress bar (about 1 ms per example for SmolLM2's
    tokenizer on one CPU core: most of a minute for 52,000 records).
    """
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise MintError(f"max_length must be an integer >= 2, got {max_length!r}")
    if long_prompts not in LONG_PROMPTS:
        raise MintError(f"long_prompts must be one of {', '.join(LONG_PROMPTS)}, got {long_prompts!r}")
    if assistant_turns not in ASSISTANT_TURNS:
        raise MintError(f"assistant_turns must be one of {', '.join(ASSISTANT_TURNS)}, got {assistant_turns!r}")
    if tokenizer.eos_token_id is None:
        raise MintError("the tokenizer has no EOS token; the response must end with one")
    bos = tokenizer.bos_token_id
    add_bos = _adds_bos(tokenizer)
    out, too_long = [], []
    for ex, segments in zip(examples, _segment_ids(examples, tokenizer, template, assistant_turns, progress)):
        if add_bos and (not segments[0] or segments[0][0] != bos):
            segments[0] = [bos] + segments[0]
        if len(segments[0]) >= max_length and long_prompts == "error":
            too_long.append((ex.index, len(segments[0])))
            continue
        out.append(_fit(ex.index, segments, max_length))
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


def _pieces_or_explain(example: Example, tokenizer, template: str, assistant_turns: str):
    """`turn_pieces`, with a chat template's own error turned into a `MintError` naming the record."""
    try:
        return turn_pieces(example, tokenizer, template=template, assistant_turns=assistant_turns)
    except MintError:
        raise
    except Exception as e:  # e.g. a chat template that rejects a system message or role order
        raise MintError(f"record {example.index}: the tokenizer's chat template failed ({type(e).__name__}: {e}); "
                        "fix the record's messages or use template 'plain'") from e


def _segment_ids(examples, tokenizer, template: str, assistant_turns: str, progress: bool) -> list[list[list[int]]]:
    """Per example its segments (lists of ids: context, turn, context, turn, ...). Rendered and
    tokenized a chunk at a time: one batched call to the fast tokenizer per kind of piece and
    chunk, instead of one per example; chunks only so that the progress bar moves."""
    from tqdm.auto import tqdm

    eos, specials = tokenizer.eos_token_id, special_ids(tokenizer)
    out: list[list[list[int]]] = []
    with tqdm(total=len(examples), unit="ex", desc="tokenize", disable=not progress) as bar:
        for start in range(0, len(examples), _TOKENIZE_CHUNK):
            part = examples[start:start + _TOKENIZE_CHUNK]
            pieces = [_pieces_or_explain(ex, tokenizer, template, assistant_turns) for ex in part]
            flat = [p for ps in pieces for p in ps]
            ids = [tokenizer([getattr(p, kind) or "" for p in flat], add_special_tokens=False)["input_ids"]
                   if flat else [] for kind in ("context", "content", "suffix")]
            k = 0
            for ps in pieces:
                segments, carry = [], []
                for p in ps:
                    context, content, suffix = ids[0][k], ids[1][k], ids[2][k]
                    k += 1
                    ends = [j for j, t in enumerate(suffix) if t in specials] if p.suffix is not None else []
                    cut = ends[-1] + 1 if ends else 0  # the end-of-turn: up to the suffix's last special token
                    segments += [carry + list(context), list(content) + (list(suffix[:cut]) if ends else [eos])]
                    carry = list(suffix[cut:]) if ends else (list(suffix) if p.suffix is not None else [])
                out.append(segments)
            bar.update(len(part))
    return out


def _fit(index: int, segments: list[list[int]], max_length: int) -> TokenizedExample:
    """Segments cut to ``max_length``: the first context from the left (down to one token), then
    whole earliest turns, and only then the last response from the right (see the module docstring)."""
    segs = [list(s) for s in segments]
    total = sum(len(s) for s in segs)
    truncated, response_cut = total > max_length, False
    while total > max_length and len(segs) > 2:
        cut = max(0, min(total - max_length, len(segs[0]) - 1))
        segs[0] = segs[0][cut:]
        total -= cut
        if total > max_length:  # drop the earliest turn; the next context then comes first
            total -= len(segs[0]) + len(segs[1])
            segs = segs[2:]
    p, r = segs[-2], segs[-1]
    if len(segs) == 2 and total > max_length:
        # The response must also fit the PT view (start token + response) and keep one prompt token.
        if len(r) > max_length - 1:
            r = r[: max_length - 1]
            response_cut = True
        keep = max(1, max_length - len(r))
        p = p[len(p) - keep:]
    segs[-2:] = [p, r]
    return TokenizedExample(index, tuple(tuple(s) for s in segs), truncated, response_cut)


def collate(tokenized: Sequence[TokenizedExample], view: str, *, pad_id: int, bos_id: int | None) -> dict[str, Any]:
    """A right-padded batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 except on the
    learned tokens). ``view`` is ``sft`` (every segment) or ``pt`` (start token + learned turns)."""
    import torch

    if view not in ("sft", "pt"):
        raise ValueError(f"view must be 'sft' or 'pt', got {view!r}")
    if view == "pt" and bos_id is None:
        raise ValueError("the PT view needs a start token; pass bos_id from collate_ids(tokenizer)")
    rows, labels = [], []
    for t in tokenized:
        if view == "sft":
            row, lab = [], []
            for k, seg in enumerate(t.segments):
                row += seg
                lab += seg if k % 2 else [IGNORE_INDEX] * len(seg)
        else:
            row, lab = [bos_id, *t.response_ids], [IGNORE_INDEX, *t.response_ids]
        rows.append(row)
        labels.append(lab)
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
    """sha256 of the data (a file's bytes; see `mint.records.source_sha256`) and the rendering
    settings (schema, template, max_length, tokenizer...)."""
    from mint.records import source_sha256

    blob = json.dumps({"file_sha256": source_sha256(path), "settings": settings}, sort_keys=True, default=str)
    return sha256_bytes(blob.encode("utf-8"))
