"""Exports of a coreset that other tools can read.

`export_subset` writes the selected records themselves, copied from the input in its own
schema, each with two added fields: `weight` (the coreset weight) and `source_index` (the
record's 0-based position in the input file). `export_coreset` does that for every ratio of a
selection folder and adds an OpenAI-`messages` variant plus ready-made entries for
LLaMA-Factory (`dataset_info.json`) and axolotl (`axolotl_datasets.yaml`).

Those trainers ignore the `weight` field: they train on every exported record once. Only
`mint train` (or a trainer told to read `weight`) applies the coreset weights.
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MintError
from .records import write_jsonl

__all__ = [
    "export_subset",
    "to_messages",
    "record_schema",
    "read_export",
    "WEIGHT_NOTE",
]

log = logging.getLogger(__name__)

# Fields this module adds to every exported record.
ADDED_FIELDS = ("weight", "source_index")

WEIGHT_NOTE = (
    "LLaMA-Factory and axolotl ignore the `weight` field: they train on every exported record "
    "once, as if all weights were 1. To train with the coreset weights use `mint train "
    "--coreset ...` (per-example weighted loss), or tell your trainer to read the `weight` "
    "column (e.g. a custom loss or a sampler with probabilities proportional to `weight`)."
)


def _json_weight(w: float, integral: bool) -> int | float:
    return int(round(w)) if integral else float(w)


def record_schema(record: dict, where: str = "record") -> str:
    """'alpaca', 'chat' or 'prompt_completion', from the fields a record carries."""
    if not isinstance(record, dict):
        raise MintError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    raise MintError(
        f"{where}: none of the known schemas (fields found: {sorted(record)}); expected "
        "instruction/input/output (Alpaca), messages (chat) or prompt/completion"
    )


def to_messages(record: dict, where: str = "record") -> list[dict]:
    """The record as OpenAI-style chat messages (the last one is the assistant's response).

    Alpaca prompts join `instruction` and a non-empty `input` with a blank line, the same
    user turn `mint.data` builds for chat templates."""
    schema = record_schema(record, where)
    if schema == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if schema == "alpaca":
        prompt = str(record["instruction"])
        extra = record.get("input") or ""
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(record["output"])}]
    return [{"role": "user", "content": str(record["prompt"])},
            {"role": "assistant", "content": str(record["completion"])}]


def export_subset(
    records: Sequence[dict],
    indices: Sequence[int] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None,
    path: str | os.PathLike,
    *,
    schema: str = "original",
) -> Path:
    """Write the records at `indices` (in that order) to JSONL at `path`, atomically.

    Each line is a copy of the original record (the input is never modified) with `weight`
    and `source_index` added; an existing field of either name is replaced, with a warning.
    `schema="original"` keeps the input's own schema; `schema="messages"` writes
    `{"messages": [...], "weight": w, "source_index": i}` for OpenAI-style chat trainers.
    `weights=None` means weight 1 for every record. Weights that are all whole numbers (the
    facility-location counts) are written as integers.
    """
    if schema not in ("original", "messages"):
        raise MintError(f"export schema must be 'original' or 'messages', got {schema!r}")
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise MintError(f"indices must be a 1-D array of integers, got dtype {idx.dtype} and shape {idx.shape}")
    n = len(records)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = int(idx[(idx < 0) | (idx >= n)][0])
        raise MintError(
            f"coreset index {bad} is outside the dataset of {n} records; the coreset was "
            "selected on a different (larger) data file: pass the file it was selected from"
        )
    if len(np.unique(idx)) != idx.size:
        raise MintError("coreset indices contain duplicates; each record may be selected once")
    if weights is None:
        w = np.ones(idx.size, dtype=np.float64)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != idx.shape:
            raise MintError(f"{w.size} weights for {idx.size} indices; they must have the same length")
        if not np.all(np.isfinite(w)) or (w.size and w.min() < 0):
            raise MintError("coreset weights must be finite and >= 0")
    integral = bool(np.all(w == np.round(w)))

    out: list[dict] = []
    replaced = set()
    for i, wi in zip(idx.tolist(), w.tolist()):
        rec = records[i]
        where = f"record {i}"
        if schema == "messages":
            row: dict[str, Any] = {"messages": to_messages(rec, where)}
        else:
            if not isinstance(rec, dict):
                raise MintError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            row = copy.deepcopy(rec)
            replaced.update(k for k in ADDED_FIELDS if k in row)
        row["weight"] = _json_weight(wi, integral)
        row["source_index"] = i
        out.append(row)
    if replaced:
        log.warning("input records already carry %s; the exported values replace them", sorted(replaced))
    path = Path(path)
    write_jsonl(path, out)
    return path


def read_export(path: str | os.PathLike) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Read an exported JSONL back: (records without the added fields, source indices, weights)."""
    import json

    records, idx, w = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MintError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
            if not isinstance(row, dict) or "weight" not in row or "source_index" not in row:
                raise MintError(f"{path}:{lineno}: not a mint export (needs `weight` and `source_index`)")
            w.append(float(row.pop("weight")))
            idx.append(int(row.pop("source_index")))
            records.append(row)
    return records, np.asarray(idx, dtype=np.int64), np.asarray(w, dtype=np.float64)
