"""Reading and writing instruction records exactly as the user gave them.

`read_records` accepts a JSON array or JSON Lines, optionally gzip-compressed, and returns the
records untouched (schema checks live in `mint.model.data`). Errors name the file, the line and the fix.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Iterable

from mint._io import atomic_write_bytes
from mint.errors import MintError

__all__ = ["read_records", "write_jsonl", "check_subset", "detect_schema", "record_schema", "SCHEMA_HINT"]


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {path}") from None
    except IsADirectoryError:
        raise MintError(f"{path} is a folder; pass the JSON or JSON Lines file inside it") from None
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise MintError(f"{path}: not a valid gzip file ({e}); remove the .gz suffix if it is plain text") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MintError(f"{path}: not UTF-8 text (byte {e.start}); re-encode the file as UTF-8") from e


def read_records(path: str | os.PathLike) -> list[dict]:
    """All records of a JSON array or JSON Lines file (`.json`, `.jsonl`, either `.gz`), in file order."""
    path = Path(path)
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise MintError(f"{path} is empty; it should hold one JSON object per line or a JSON array of objects")
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise MintError(f"{path}, line {e.lineno}, column {e.colno}: malformed JSON "
                            f"({e.msg.removesuffix(' at')})") from e  # "Unterminated string starting at"
        where = [f"{path}, record {i}" for i in range(len(records))]
    else:
        records, where = [], []
        for lineno, line in enumerate(io.StringIO(text), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MintError(
                    f"{path}, line {lineno}: malformed JSON ({e.msg.removesuffix(' at')} at column {e.colno}); "
                    "each line must be one complete JSON object"
                ) from e
            where.append(f"{path}, line {lineno}")
    if not records:
        raise MintError(f"{path} holds no records; it should hold at least one JSON object")
    for rec, loc in zip(records, where):
        if not isinstance(rec, dict):
            raise MintError(f"{loc}: expected a JSON object, found {type(rec).__name__}")
    return records


SCHEMA_HINT = "expected 'instruction'/'input'/'output' (Alpaca), 'messages' (chat) or 'prompt'/'completion'"


def detect_schema(record: dict) -> str | None:
    """The schema a record's keys point to ('alpaca', 'chat', 'prompt_completion'), or None.

    The one rule for every reader and writer (`mint.model.data`, `mint.pipeline.export`). It
    looks at keys only; whether the record then carries every key of its schema is checked by
    whoever reads the values, so the error can name the missing key."""
    if "messages" in record:
        return "chat"
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
        raise MintError(f"{where}: none of the three schemas fits the keys {sorted(record)}; {SCHEMA_HINT}")
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
