"""`mint inspect`: what a user checks about a data source before an hour of gradient features.

`inspect_data` reads the source (any format of `mint.sources`) and reports its format and schema,
record and turn counts, the records that would be refused (all of them, not only the first),
duplicates, empty fields and, with a tokenizer, token-length percentiles and how many records
``max_length`` would truncate. `inspect_text` is the same report for a terminal.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from typing import Any


__all__ = ["inspect_data", "inspect_text"]

_SHOWN = 5  # bad records listed by name
_PERCENTILES = (50, 90, 95, 99)


def _examples(records, schema: str, assistant_turns: str) -> tuple[list, list[str]]:
    """Examples of the records that parse, and `file, line: problem` for those that do not."""
    from mint.model.data import Example, parse_in_schema
    from mint.model.schemas import BadRecord

    examples, bad = [], []
    for i, record in enumerate(records):
        try:
            p = parse_in_schema(record, schema, assistant_turns=assistant_turns)
        except BadRecord as e:
            bad.append(f"{records.where(i)}: {e}")
            continue
        examples.append(Example(i, schema, p.prompt_messages, p.response, record, p.prompt_text, p.learned))
    return examples, bad


def _contents(examples, assistant_turns: str) -> dict[str, Any]:
    """Turn counts, duplicates and empty fields."""
    learned = [1 + (len(ex.learned) if assistant_turns == "all" else 0) for ex in examples]
    conversations, prompts, empty = set(), set(), Counter()
    dup_records = dup_prompts = 0
    for ex in examples:
        prompt = json.dumps([ex.prompt_text, list(ex.prompt_messages)], sort_keys=True, ensure_ascii=False)
        whole = json.dumps([prompt, ex.response], ensure_ascii=False)
        dup_records += whole in conversations
        dup_prompts += prompt in prompts
        conversations.add(whole)
        prompts.add(prompt)
        empty.update(k for k, v in ex.record.items() if isinstance(v, str) and not v.strip())
        n_empty = sum(not m["content"].strip() and m["role"] != "tool" and not m.get("tool_calls")
                      for m in ex.prompt_messages)
        if n_empty:
            empty["(empty messages)"] += n_empty
    return {
        "turns": {"messages": sum(len(ex.prompt_messages) + 1 for ex in examples),
                  "learned_assistant_turns": sum(learned),
                  "multi_turn_records": sum(bool(ex.learned) for ex in examples),
                  "max_messages": max((len(ex.prompt_messages) + 1 for ex in examples), default=0)},
        "duplicates": {"records": dup_records, "prompts": dup_prompts},
        "empty_fields": dict(sorted(empty.items())),
    }


def _percentiles(values) -> dict[str, int]:
    import numpy as np

    a = np.asarray(values, dtype=np.int64)
    out = {f"p{q}": int(np.percentile(a, q, method="higher")) for q in _PERCENTILES}
    out["max"] = int(a.max())
    return out


def _tokens(examples, model, *, max_length: int, template: str, assistant_turns: str, progress: bool) -> dict:
    """Token lengths as the pipeline would tokenize (nothing cut), and what ``max_length`` would cut."""
    from mint.model.data import tokenize_examples
    from mint.model.modeling import load_tokenizer
    from mint.model.turns import resolve_template

    tokenizer = load_tokenizer(model)
    toks = tokenize_examples(examples, tokenizer, max_length=sys.maxsize, template=template,
                             assistant_turns=assistant_turns, progress=progress)
    ends = Counter(t.last_response_ids[-1] for t in toks)
    return {
        "model": str(model),
        "template": resolve_template(template, tokenizer),
        "response_end": tokenizer.convert_ids_to_tokens(ends.most_common(1)[0][0]) if ends else None,
        "max_length": max_length,
        "total": _percentiles([t.sft_length for t in toks]),
        "prompt": _percentiles([t.sft_length - len(t.response_ids) for t in toks]),
        "response": _percentiles([len(t.response_ids) for t in toks]),
        "truncated": sum(t.sft_length > max_length for t in toks),
        "prompt_fills_max_length": sum(len(t.prompt_ids) >= max_length for t in toks),
    }


def inspect_data(source: str | os.PathLike, *, model: str | os.PathLike | None = None, max_length: int = 512,
                 schema: str = "auto", template: str = "auto", assistant_turns: str = "all",
                 progress: bool = True) -> dict[str, Any]:
    """The report of a data source as one JSON-ready dict (see the module docstring); the token
    section only with ``model`` (a folder, alias or cached hub id whose tokenizer is loaded)."""
    from mint.model.data import read_with_schema

    records, schema = read_with_schema(source, schema=schema, assistant_turns=assistant_turns)
    examples, bad = _examples(records, schema, assistant_turns)
    report: dict[str, Any] = {"source": records.source, "format": records.format, "schema": schema,
                              "assistant_turns": assistant_turns, "records": len(records),
                              "bad_records": {"count": len(bad), "first": bad[:_SHOWN]}}
    report.update(_contents(examples, assistant_turns))
    if model is not None and examples:
        report["tokens"] = _tokens(examples, model, max_length=max_length, template=template,
                                   assistant_turns=assistant_turns, progress=progress)
    return report


def inspect_text(report: dict[str, Any]) -> str:
    """The report for a terminal, one fact a line."""
    t, d = report["turns"], report["duplicates"]
    lines = [f"source: {report['source']} ({report['format']}, {report['schema']} schema)",
             f"records: {report['records']}; messages: {t['messages']} (at most {t['max_messages']} in a record); "
             f"learned assistant turns ({report['assistant_turns']}): {t['learned_assistant_turns']}; "
             f"multi-turn records: {t['multi_turn_records']}",
             f"duplicates: {d['records']} records repeat an earlier one; {d['prompts']} prompts repeat an earlier one"]
    empty = ", ".join(f"{k} {v}" for k, v in report["empty_fields"].items()) or "none"
    lines.append(f"empty fields: {empty}")
    bad = report["bad_records"]
    lines.append(f"bad records: {bad['count']}" + ("" if not bad["count"] else " (mint refuses the file until they "
                                                                                "are fixed or removed)"))
    lines += [f"  {b}" for b in bad["first"]]
    if bad["count"] > len(bad["first"]):
        lines.append(f"  ... and {bad['count'] - len(bad['first'])} more")
    tok = report.get("tokens")
    if tok:
        lines.append(f"tokens ({tok['model']}, template {tok['template']}, responses end with "
                     f"{tok['response_end']}):")
        for part in ("total", "prompt", "response"):
            lines.append(f"  {part:<8} " + "  ".join(f"{k} {v}" for k, v in tok[part].items()))
        lines.append(f"  max_length {tok['max_length']} would truncate {tok['truncated']} records; "
                     f"{tok['prompt_fills_max_length']} have a prompt that alone fills it")
    return "\n".join(lines) + "\n"
