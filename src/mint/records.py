"""Reading and writing instruction records exactly as the user gave them.

`read_records` reads any source `mint.sources` knows (JSON / JSON Lines, `.gz` too, parquet, CSV,
Arrow, a `datasets` folder, a hub id) and returns the records untouched, with `where(i)` naming
the file and line or row of each; schema checks live in `mint.model.schemas`. `detect_schema`
is the one rule that maps a record's keys to its schema. Errors name the file, the line and the fix.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from mint._io import atomic_write_bytes
from mint.errors import MintError
from mint.sources import Records, read_source, source_format, source_sha256

__all__ = ["read_records", "write_jsonl", "check_subset", "detect_schema", "record_schema", "SCHEMA_HINT",
           "Records", "source_sha256", "source_format"]


def read_records(path: str | os.PathLike) -> Records:
    """All records of a data source, in order (see `mint.sources`): a list of dicts with
    `.where(i)` (the file and line or row of record i) and `.format`."""
    return read_source(path)


SCHEMA_HINT = ("expected 'instruction'/'output' (Alpaca, optional 'input', 'system', 'history'), 'messages' "
               "(OpenAI chat), 'conversations' (ShareGPT) or 'prompt'/'completion'")


def detect_schema(record: dict) -> str | None:
    """The schema a record's keys point to ('alpaca', 'chat', 'sharegpt', 'prompt_completion'), or None.

    The one rule for every reader and writer (`mint.model.schemas`, `mint.pipeline.export`). It
    looks at keys only; whether the record then carries every key of its schema is checked by
    whoever reads the values, so the error can name the missing key."""
    if "messages" in record:
        return "chat"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record or ("output" in record and "prompt" not in record):
        return "alpaca"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    return None


def record_schema(record: dict, where: str = "record") -> str:
    """`detect_schema`, or a MintError naming `where` (a file and line) and the keys found."""
    if not isinstance(record, dict):
        raise MintError(f"{where}: expected a JSON object, found {type(record).__name__}")
    schema = detect_schema(record)
    if schema is None:
        raise MintError(f"{where}: no schema fits the keys {sorted(record)}; {SCHEMA_HINT}")
    return schema


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write records as JSON Lines, atomically; keys keep the order they have in each dict."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
    return atomic_write_bytes(path, data)


def check_subset(indices, weights, n_records: int, *, source: str = "coreset",
                 allow_empty: bool = False):
    """Validate a subset of a data file: `indices` (None = every record) and `weights`
    (None = 1 each). Returns `(indices int64, weights float64)`.

    Indices must be distinct and within the file; weights finite, >= 0 (a facility-location
    weight is 0 for an element that no example has as its nearest) and not all 0."""
    import numpy as np

    if indices is None:
        idx = np.arange(n_records, dtype=np.int64)
    else:
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise MintError(f"{source}: indices must be a 1-D array of integers, got shape {idx.shape} "
                            f"dtype {idx.dtype}")
        if idx.size == 0 and not allow_empty:
            raise MintError(f"{source}: the subset is empty; select at least one record")
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= n_records)]
        if bad.size:
            raise MintError(f"{source}: index {int(bad[0])} is outside the data set of {n_records} records "
                            "(was it selected from other data?); pass the data file it was selected from")
        if np.unique(idx).size != idx.size:
            raise MintError(f"{source}: indices contain duplicates; a coreset lists each record once")
    if weights is None:
        return idx, np.ones(idx.size, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != idx.shape:
        raise MintError(f"{source}: {w.size} weights for {idx.size} indices; give one weight per index")
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        raise MintError(f"{source}: weights must be finite and >= 0, but the weight of index {int(idx[bad[0]])} "
                        f"is {float(w[bad[0]])}; drop that index or fix its weight")
    if w.size and not np.any(w > 0):
        raise MintError(f"{source}: every weight is 0; at least one record must have a positive weight")
    return idx, w
