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

from mint.errors import MintError
from mint.pipeline.coresets import check_source, coreset_file, list_coresets, load_coreset, same_ratio
from mint.records import check_subset, record_schema, write_jsonl

__all__ = [
    "export_subset",
    "to_messages",
    "read_export",
    "export_coreset",
    "llamafactory_entry",
    "axolotl_stanza",
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


def _field(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise MintError(f"{where}: missing key {key!r}; fix or remove this record")
    return str(record[key])


def to_messages(record: dict, where: str = "record") -> list[dict]:
    """The record as OpenAI-style chat messages (the last one is the assistant's response).

    Alpaca prompts join `instruction` and a non-empty `input` with a blank line, the same
    user turn `mint.model.data` builds for chat templates."""
    schema = record_schema(record, where)
    if schema == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    if schema == "alpaca":
        prompt = _field(record, "instruction", where)
        extra = record.get("input") or ""
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _field(record, "output", where)}]
    return [{"role": "user", "content": _field(record, "prompt", where)},
            {"role": "assistant", "content": _field(record, "completion", where)}]


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
    idx, w = check_subset(indices, weights, len(records), source="coreset", allow_empty=True)
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


# ---------------------------------------------------------------------------------------------
# Whole selection folders: every ratio, plus trainer configs


def llamafactory_entry(file_name: str, schema: str) -> dict[str, Any]:
    """A LLaMA-Factory `dataset_info.json` entry for an exported file (path relative to the
    folder given as LLaMA-Factory's `dataset_dir`)."""
    if schema == "alpaca":
        return {"file_name": file_name, "columns": {"prompt": "instruction", "query": "input", "response": "output"}}
    if schema == "messages":
        return {
            "file_name": file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                     "assistant_tag": "assistant", "system_tag": "system"},
        }
    raise MintError(f"no LLaMA-Factory entry for schema {schema!r}; export the messages variant")


def axolotl_stanza(path: str | os.PathLike, schema: str) -> dict[str, Any]:
    """One item of an axolotl `datasets:` list for an exported JSONL file."""
    if schema == "alpaca":
        return {"path": str(path), "ds_type": "json", "type": "alpaca"}
    if schema == "messages":
        return {"path": str(path), "ds_type": "json", "type": "chat_template", "field_messages": "messages",
                "message_property_mappings": {"role": "role", "content": "content"}}
    raise MintError(f"no axolotl stanza for schema {schema!r}; export the messages variant")


def export_coreset(
    data_path: str | os.PathLike,
    selection_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    ratios: Sequence[float] | None = None,
    name: str = "mint_coreset",
) -> dict[float, dict[str, Path]]:
    """Export every coreset of a selection folder (or the given ratios) to `output_dir`
    (default: the selection folder): per ratio `coreset_{r:.2f}.jsonl` (own schema + weight +
    source_index) and `coreset_{r:.2f}.messages.jsonl`, plus `dataset_info.json` (LLaMA-Factory),
    `axolotl_datasets.yaml` and `EXPORTS.md` for all of them. Returns ratio -> {kind: path}."""
    from mint.records import read_records

    data_path, selection_dir = Path(data_path), Path(selection_dir)
    out_dir = Path(output_dir) if output_dir is not None else selection_dir
    records = read_records(data_path)
    schema = record_schema(records[0], f"{data_path}, record 0")
    found = list_coresets(selection_dir)
    if ratios is not None:
        missing = [r for r in ratios if not any(same_ratio(r, f) for f in found)]
        if missing:
            raise MintError(f"no coreset for ratio(s) {missing} in {selection_dir}; available: {sorted(found)}")
        found = {f: p for f, p in found.items() if any(same_ratio(r, f) for r in ratios)}
    result: dict[float, dict[str, Path]] = {}
    for ratio, npz in sorted(found.items()):
        coreset = load_coreset(npz)
        check_source(coreset, data_path, len(records))
        if coreset.weights is None:
            raise MintError(f"{npz} has no 'weights' array; export the coresets written by `mint select`")
        own = export_subset(records, coreset.indices, coreset.weights, out_dir / coreset_file(ratio, "jsonl"))
        msgs = export_subset(records, coreset.indices, coreset.weights,
                             out_dir / coreset_file(ratio, "messages.jsonl"), schema="messages")
        result[ratio] = {"records": own, "messages": msgs}
    _write_trainer_files(out_dir, result, name, schema)
    return result


def _write_trainer_files(out_dir: Path, exported: dict[float, dict[str, Path]], name: str, schema: str) -> None:
    """dataset_info.json (LLaMA-Factory), axolotl_datasets.yaml and EXPORTS.md for the exported files."""
    import yaml

    from mint._io import atomic_write_json, atomic_write_text

    info: dict[str, Any] = {}
    stanzas: list[dict[str, Any]] = []
    for ratio, paths in sorted(exported.items()):
        tag = f"{ratio:.2f}"
        info[f"{name}_{tag}"] = llamafactory_entry(paths["messages"].name, "messages")
        stanzas.append(axolotl_stanza(paths["messages"].resolve(), "messages"))
        if schema == "alpaca":
            info[f"{name}_{tag}_alpaca"] = llamafactory_entry(paths["records"].name, "alpaca")
    atomic_write_json(out_dir / "dataset_info.json", info)
    header = "# axolotl `datasets:` stanza for the exported coresets (pick one item per run).\n"
    header += "# " + WEIGHT_NOTE.replace("`", "") + "\n"
    stanza_text = yaml.safe_dump({"datasets": stanzas}, sort_keys=False)
    atomic_write_text(out_dir / "axolotl_datasets.yaml", header + stanza_text)
    atomic_write_text(out_dir / "EXPORTS.md", _exports_readme(out_dir, name, sorted(exported), schema))


def _exports_readme(out_dir: Path, name: str, ratios: list[float], schema: str) -> str:
    lines = [
        "# Exported coresets", "",
        f"Input schema: {schema}. Per ratio:", "",
        "- `coreset_R.jsonl`: the selected records in the input's own schema, with `weight` and "
        "`source_index` (0-based position in the input file) added;",
        "- `coreset_R.messages.jsonl`: the same as OpenAI-style `messages`, with `weight` and `source_index`.", "",
        f"Ratios: {', '.join(f'{r:.2f}' for r in ratios)}.", "",
        "## Weights", "", WEIGHT_NOTE, "",
        "## LLaMA-Factory", "",
        f"`dataset_info.json` holds one entry per ratio (`{name}_R`, chat format"
        + (f"; `{name}_R_alpaca`, Alpaca columns" if schema == "alpaca" else "")
        + f"). Use `dataset_dir: {out_dir}` and `dataset: {name}_{ratios[0]:.2f}`.", "",
        "## axolotl", "",
        "`axolotl_datasets.yaml` holds a `datasets:` list with one item per ratio; copy the item you want "
        "into your axolotl config.", "",
    ]
    return "\n".join(lines)
