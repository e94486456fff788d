"""Data sources: a file of any common format, a `datasets` folder or a hub dataset id, read into
records (plain dicts, as given) that remember where each came from; and the source's sha256.

- JSON array or JSON Lines (`.json`, `.jsonl`, `.ndjson`, and any other name; `.gz` too);
- Parquet (`.parquet`, `.pq`) and Arrow IPC (`.arrow`, `.feather`, file or stream), read with pyarrow;
- CSV and TSV (`.csv`, `.tsv`, `.gz` too): the header names the keys (the stdlib reader, so
  errors keep line numbers);
- a folder written by `datasets`' `save_to_disk` (a `DatasetDict`: its `train` split, or `FOLDER:split`);
- a hub dataset id, `name` or `org/name`, optionally `:split` (default `train`); only when online:
  with `HF_HUB_OFFLINE` or `HF_DATASETS_OFFLINE` set it is a clear error, never a hang.

In tabular formats (parquet, Arrow, CSV, datasets) a null cell is an absent key, so a missing
value reads as a missing key. `source_sha256` is the sha256 of a file's bytes (the fingerprint
every artifact records), of a folder's files, or of a hub dataset's `datasets` fingerprint.
Heavy readers (pyarrow, datasets) are imported inside the functions that need them.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from functools import lru_cache
from pathlib import Path

from mint.errors import MintError

__all__ = ["Records", "read_source", "source_sha256", "source_format", "is_hub_id"]

_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
             ".csv": "csv", ".tsv": "tsv", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SPLIT = re.compile(r"^[\w.\[\]%+-]+$")
_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class Records(list):
    """The records of one source, in order, with `where(i)`: the file and line (or row) of record i,
    for error messages. `format` is what was read (`jsonl`, `json`, `parquet`, `csv`, ...)."""

    def __init__(self, items=(), *, source: str = "", format: str = "json", lines: list[int] | None = None,
                 unit: str = "record"):
        super().__init__(items)
        self.source, self.format, self._lines, self._unit = source, format, lines, unit

    def where(self, i: int) -> str:
        if self._lines is not None and 0 <= i < len(self._lines):
            return f"{self.source}, line {self._lines[i]} ({self._unit} {i})"
        return f"{self.source}, {self._unit} {i}"


def is_hub_id(name: str) -> bool:
    """`name` or `org/name` (optionally `:split`) that is no local path and has no data-file suffix."""
    base = name.rsplit(":", 1)[0] if ":" in name else name
    if not _HUB_ID.match(base) or Path(base).exists():
        return False
    return not any(base.lower().removesuffix(".gz").endswith(s) for s in _SUFFIXES)


def _parse(source: str | os.PathLike) -> tuple[str, str | None]:
    """(path or hub id, split or None): a `:split` suffix counts only after a folder or a hub id."""
    text = str(source)
    if Path(text).exists() or ":" not in text:
        return text, None
    base, split = text.rsplit(":", 1)
    if _SPLIT.match(split) and (Path(base).is_dir() or is_hub_id(base)):
        return base, split
    return text, None


def source_format(source: str | os.PathLike) -> str:
    """What `read_source` would read: a file format by its name, `dataset_folder` or `hub`."""
    name, _ = _parse(source)
    path = Path(name)
    if path.is_dir():
        return "dataset_folder"
    if not path.exists() and is_hub_id(name):
        return "hub"
    base = path.name.lower()
    gz = base.endswith(".gz")
    fmt = _SUFFIXES.get(Path(base.removesuffix(".gz")).suffix, "json")
    return f"{fmt}.gz" if gz else fmt


def read_source(source: str | os.PathLike) -> Records:
    """Every record of the source, in order (see the module docstring); `MintError` for bad input."""
    name, split = _parse(source)
    path = Path(name)
    fmt = source_format(source)
    if fmt == "hub":
        records = _read_hub(name, split)
    elif fmt == "dataset_folder":
        records = _read_folder(path, split)
    elif not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    elif fmt in ("parquet", "arrow"):
        records = _read_table(path, fmt)
    elif fmt.removesuffix(".gz") in ("csv", "tsv"):
        records = _read_csv(path, _read_text(path), "\t" if fmt.startswith("tsv") else ",")
    else:
        records = _read_json(path, _read_text(path))
    if not records:
        raise MintError(f"{records.source} holds no records; it should hold at least one")
    return records


# ---------------------------------------------------------------------------------------------
# Text formats


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"data file not found: {path}") from None
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise MintError(f"{path}: not a valid gzip file ({e}); remove the .gz suffix if it is plain text") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MintError(f"{path}: not UTF-8 text (byte {e.start}); re-encode the file as UTF-8") from e


def _read_json(path: Path, text: str) -> Records:
    """A JSON array or JSON Lines (blank lines skipped), each record a JSON object."""
    stripped = text.lstrip()
    gz = ".gz" if path.name.endswith(".gz") else ""
    if not stripped:
        raise MintError(f"{path} is empty; it should hold one JSON object per line or a JSON array of objects")
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise MintError(f"{path}, line {e.lineno}, column {e.colno}: malformed JSON ({e.msg.removesuffix(' at')})") from e
        out = Records(records, source=str(path), format="json" + gz)
    else:
        items, lines = [], []
        for lineno, line in enumerate(io.StringIO(text), start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MintError(f"{path}, line {lineno}: malformed JSON ({e.msg.removesuffix(' at')} at column {e.colno}); "
                                "each line must be one complete JSON object") from e
            lines.append(lineno)
        out = Records(items, source=str(path), format="jsonl" + gz, lines=lines)
    for i, rec in enumerate(out):
        if not isinstance(rec, dict):
            where = f"{path}, line {out._lines[i]}" if out._lines is not None else out.where(i)
            raise MintError(f"{where}: expected a JSON object, found {type(rec).__name__}")
    return out


def _read_csv(path: Path, text: str, delimiter: str) -> Records:
    """One record per row, keyed by the header; a short row lacks its last keys."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise MintError(f"{path} is empty; it should start with a header row naming the columns")
    fmt = ("tsv" if delimiter == "\t" else "csv") + (".gz" if path.name.endswith(".gz") else "")
    items, lines = [], []
    try:
        for row in reader:
            if None in row:  # more cells than the header names
                raise MintError(f"{path}, line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} fields "
                                f"but the header has {len(reader.fieldnames)}; quote fields that hold the delimiter")
            items.append({k: v for k, v in row.items() if v is not None})
            lines.append(reader.line_num)
    except csv.Error as e:
        raise MintError(f"{path}, line {reader.line_num}: malformed {fmt.split('.')[0].upper()} ({e})") from e
    return Records(items, source=str(path), format=fmt, lines=lines, unit="row")


# ---------------------------------------------------------------------------------------------
# Tables: parquet, Arrow, datasets folders, the hub


def _rows(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def _read_table(path: Path, fmt: str) -> Records:
    try:
        import pyarrow as pa
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MintError(f"reading {path} needs the package pyarrow; install it with: pip install pyarrow") from e
    try:
        if fmt == "parquet":
            table = pq.read_table(path)
        else:
            try:
                with pa.memory_map(str(path)) as f:
                    table = ipc.open_file(f).read_all()
            except pa.ArrowInvalid:  # the stream format (what `datasets` writes)
                with pa.memory_map(str(path)) as f:
                    table = ipc.open_stream(f).read_all()
    except (pa.ArrowException, OSError) as e:
        raise MintError(f"{path}: not a readable {fmt} file ({e}); check the file or convert it to JSON Lines") from e
    return Records(_rows(table.to_pylist()), source=str(path), format=fmt, unit="row")


def _datasets(what: str):
    try:
        import datasets
    except ImportError as e:
        raise MintError(f"reading {what} needs the package datasets; install it with: pip install datasets") from e
    return datasets


def _pick_split(ds, split: str | None, where: str):
    if not hasattr(ds, "keys"):  # a Dataset
        if split is not None:
            raise MintError(f"{where} holds one split; drop the ':{split}' suffix")
        return ds
    names = sorted(ds.keys())
    chosen = split or ("train" if "train" in names else (names[0] if len(names) == 1 else None))
    if chosen not in names:
        raise MintError(f"{where} has the splits {names}; name one as {where}:SPLIT")
    return ds[chosen]


def _read_folder(path: Path, split: str | None) -> Records:
    if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise MintError(f"{path} is a folder but not one written by datasets' save_to_disk; pass the data file "
                        "inside it (JSON, JSON Lines, parquet, CSV or Arrow)")
    datasets = _datasets(str(path))
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # a damaged folder: datasets raises several kinds
        raise MintError(f"{path}: datasets could not load this folder ({type(e).__name__}: {e})") from e
    where = str(path) + (f":{split}" if split else "")
    return Records(_rows(_pick_split(ds, split, str(path)).to_list()), source=where, format="dataset_folder",
                   unit="row")


def _offline() -> str | None:
    for var in _OFFLINE:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


@lru_cache(maxsize=4)
def _hub_dataset(name: str, split: str):
    var = _offline()
    if var:
        raise MintError(f"{name!r} is no local file or folder, and as a hub dataset id it cannot be fetched: {var}=1 "
                        f"is set (offline); unset {var} to download it, or pass a local file")
    datasets = _datasets(f"the hub dataset {name!r}")
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # not found, no network, a bad split: say which and how to go on
        raise MintError(f"hub dataset {name!r} (split {split!r}) could not be loaded ({type(e).__name__}: {e}); "
                        "check the id and split, or download the data and pass the file") from e


def _read_hub(name: str, split: str | None) -> Records:
    split = split or "train"
    ds = _hub_dataset(name, split)
    return Records(_rows(ds.to_list()), source=f"{name}:{split}", format="hub", unit="row")


def source_sha256(source: str | os.PathLike) -> str:
    """The fingerprint of a source: a file's sha256 (as `mint._io.sha256_file`, so it stays what
    earlier versions recorded); a folder's: the sha256 of its files' names and hashes (and the
    split); a hub dataset's: the sha256 of its id, split and `datasets` fingerprint."""
    from mint._io import sha256_bytes, sha256_file

    name, split = _parse(source)
    path = Path(name)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = [[p.relative_to(path).as_posix(), sha256_file(p)] for p in files]
        return sha256_bytes(json.dumps({"files": listing, "split": split}).encode("utf-8"))
    if is_hub_id(name):
        ds = _hub_dataset(name, split or "train")
        blob = {"hub": name, "split": split or "train", "fingerprint": getattr(ds, "_fingerprint", None)}
        return sha256_bytes(json.dumps(blob, sort_keys=True).encode("utf-8"))
    raise FileNotFoundError(f"data file not found: {path}")
