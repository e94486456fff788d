"""Reading and writing instruction records exactly as the user gave them.

`read_records` accepts a JSON array or JSON Lines, optionally gzip-compressed, and returns the
records untouched (schema checks live in `mint.data`). Errors name the file, the line and the fix.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Iterable

from ._io import atomic_write_bytes
from .errors import MintError

__all__ = ["read_records", "write_jsonl"]


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
            raise MintError(f"{path}, line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from e
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
                    f"{path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                    "each line must be one complete JSON object"
                ) from e
            where.append(f"{path}, line {lineno}")
    if not records:
        raise MintError(f"{path} holds no records; it should hold at least one JSON object")
    for rec, loc in zip(records, where):
        if not isinstance(rec, dict):
            raise MintError(f"{loc}: expected a JSON object, found {type(rec).__name__}")
    return records


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write records as JSON Lines, atomically; keys keep the order they have in each dict."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
    return atomic_write_bytes(path, data)
