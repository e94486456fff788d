"""Exports of a coreset that other tools can read.

`export_subset` writes the selected records themselves, copied from the input in its own
schema, each with two added fields: `weight` (the coreset weight) and `source_index` (the
record's 0-based position in the input file); or converted to one of the trainer formats of
`mint.pipeline.trainers` (`messages`, `sharegpt`, `trl`). `export_coreset` does that for every
ratio of a selection folder and adds ready-made entries for LLaMA-Factory (merged into
`dataset_info.json`) and axolotl (`axolotl_datasets.yaml`) that train what mint learned.

Those trainers ignore the `weight` field: they train on every exported record once. Only
`mint train` (or a trainer told to read `weight`) applies the coreset weights; for the others
`materialize_weights` writes the trainer files with the weights turned into rows: `replicate`
repeats each record `round(weight)` times (facility-location weights count the examples a
record stands for, so about N rows), `resample` draws as many rows as the coreset has, with
replacement and probability proportional to the weight (seeded; what `mint train --weighting
sampling` draws per epoch). The file in the input's own schema always holds the coreset itself.
"""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mint.choices import MATERIALIZE
from mint.errors import MintError
from mint.pipeline.coresets import check_source, coreset_file, list_coresets, load_coreset, same_ratio
from mint.pipeline.trainers import (axolotl_stanza, llamafactory_drops, llamafactory_entry, merge_dataset_info,
                                    to_messages, to_sharegpt, to_trl)
from mint.records import check_subset, record_schema, write_jsonl

__all__ = [
    "export_subset",
    "to_messages",
    "read_export",
    "export_coreset",
    "materialize",
    "llamafactory_entry",
    "axolotl_stanza",
    "WEIGHT_NOTE",
    "EXPORT_SCHEMAS",
]

log = logging.getLogger(__name__)

# Fields this module adds to every exported record.
ADDED_FIELDS = ("weight", "source_index")
EXPORT_SCHEMAS = ("original", "messages", "sharegpt", "trl")
# The trainer files of each ratio: kind -> file suffix
TRAINER_FILES = {"messages": "messages.jsonl", "sharegpt": "sharegpt.jsonl", "trl": "trl.jsonl"}

WEIGHT_NOTE = (
    "LLaMA-Factory, axolotl and TRL ignore the `weight` field: they train on every exported record "
    "once, as if all weights were 1. To train with the coreset weights use `mint train "
    "--coreset ...` (per-example weighted loss), tell your trainer to read the `weight` "
    "column (e.g. a custom loss or a sampler with probabilities proportional to `weight`), or export "
    "with `--materialize_weights replicate|resample`."
)


def _json_weight(w: float, integral: bool) -> int | float:
    return int(round(w)) if integral else float(w)


def _rows(records: Sequence[dict], idx: np.ndarray, w: np.ndarray, schema: str, assistant_turns: str) -> list[dict]:
    """The exported rows of the records at `idx` (repeats allowed), each with its weight and source index."""
    integral = bool(np.all(w == np.round(w)))
    out: list[dict] = []
    replaced = set()
    for i, wi in zip(idx.tolist(), w.tolist()):
        rec, where = records[i], f"record {i}"
        if schema == "original":
            if not isinstance(rec, dict):
                raise MintError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            rows = [copy.deepcopy(rec)]
            replaced.update(k for k in ADDED_FIELDS if k in rows[0])
        elif schema == "messages":
            rows = [{"messages": to_messages(rec, where, assistant_turns=assistant_turns)}]
        elif schema == "sharegpt":
            rows = [to_sharegpt(rec, where, assistant_turns=assistant_turns)]
        else:
            rows = to_trl(rec, where, assistant_turns=assistant_turns)
        for row in rows:  # a conversation split into several rows keeps its total weight
            row["weight"] = _json_weight(wi, integral) if len(rows) == 1 else float(wi) / len(rows)
            row["source_index"] = i
        out += rows
    if replaced:
        log.warning("input records already carry %s; the exported values replace them", sorted(replaced))
    return out


def export_subset(
    records: Sequence[dict],
    indices: Sequence[int] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None,
    path: str | os.PathLike,
    *,
    schema: str = "original",
    assistant_turns: str = "all",
) -> Path:
    """Write the records at `indices` (in that order) to JSONL at `path`, atomically.

    Each line is a copy of the original record (the input is never modified) with `weight`
    and `source_index` added; an existing field of either name is replaced, with a warning.
    `schema="original"` keeps the input's own schema; `messages` writes `{"messages": [...]}`
    for OpenAI-style chat trainers, `sharegpt` LLaMA-Factory's ShareGPT rows, `trl` TRL's
    prompt/completion rows (see `mint.pipeline.trainers`; `assistant_turns` as in training).
    `weights=None` means weight 1 for every record. Weights that are all whole numbers (the
    facility-location counts) are written as integers.
    """
    if schema not in EXPORT_SCHEMAS:
        raise MintError(f"export schema must be one of {', '.join(EXPORT_SCHEMAS)}, got {schema!r}")
    idx, w = check_subset(indices, weights, len(records), source="coreset", allow_empty=True)
    path = Path(path)
    write_jsonl(path, _rows(records, idx, w, schema, assistant_turns))
    return path


def materialize(indices, weights, mode: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights) with the weights turned into rows, for trainers that ignore them (see
    the module docstring): `none` keeps them; `replicate` and `resample` give rows of weight 1."""
    if mode not in MATERIALIZE:
        raise MintError(f"materialize_weights must be one of {', '.join(MATERIALIZE)}, got {mode!r}")
    idx, w = np.asarray(indices, dtype=np.int64), np.asarray(weights, dtype=np.float64)
    if mode == "none":
        return idx, w
    if mode == "replicate":
        rows = np.repeat(idx, np.round(w).astype(np.int64))
        if rows.size == 0:
            raise MintError("every weight rounds to 0 copies; use materialize_weights 'resample'")
        if not np.all(w == np.round(w)):
            log.info("replicate: weights rounded to whole copies (%d rows for %d records)", rows.size, idx.size)
    else:
        rows = np.random.default_rng(seed).choice(idx, size=idx.size, replace=True, p=w / w.sum())
    return rows.astype(np.int64), np.ones(rows.size, dtype=np.float64)


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


def _selected(selection_dir: Path, ratios: Sequence[float] | None) -> dict[float, Path]:
    found = list_coresets(selection_dir)
    if ratios is not None:
        missing = [r for r in ratios if not any(same_ratio(r, f) for f in found)]
        if missing:
            raise MintError(f"no coreset for ratio(s) {missing} in {selection_dir}; available: {sorted(found)}")
        found = {f: p for f, p in found.items() if any(same_ratio(r, f) for r in ratios)}
    return found


def export_coreset(
    data_path: str | os.PathLike,
    selection_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    *,
    ratios: Sequence[float] | None = None,
    name: str = "mint_coreset",
    assistant_turns: str = "all",
    materialize_weights: str = "none",
    seed: int = 0,
) -> dict[float, dict[str, Path]]:
    """Export every coreset of a selection folder (or the given ratios) to `output_dir`
    (default: the selection folder): per ratio `coreset_{r:.2f}.jsonl` (own schema + weight +
    source_index) and the trainer files `coreset_{r:.2f}.messages.jsonl`, `.sharegpt.jsonl`
    and `.trl.jsonl` (with `materialize_weights`, their rows carry the weights; see the module
    docstring), plus `dataset_info.json` (LLaMA-Factory; merged into an existing one),
    `axolotl_datasets.yaml` and `EXPORTS.md`. Returns ratio -> {kind: path}."""
    from mint.records import read_records

    data_path, selection_dir = Path(data_path), Path(selection_dir)
    out_dir = Path(output_dir) if output_dir is not None else selection_dir
    if materialize_weights not in MATERIALIZE:  # before anything is read
        raise MintError(f"materialize_weights must be one of {', '.join(MATERIALIZE)}, got {materialize_weights!r}")
    records = read_records(data_path)
    schema = record_schema(records[0], records.where(0))
    result: dict[float, dict[str, Path]] = {}
    dropped: dict[float, int] = {}
    for ratio, npz in sorted(_selected(selection_dir, ratios).items()):
        coreset = load_coreset(npz)
        check_source(coreset, data_path, len(records))
        if coreset.weights is None:
            raise MintError(f"{npz} has no 'weights' array; export the coresets written by `mint select`")
        result[ratio] = {"records": export_subset(records, coreset.indices, coreset.weights,
                                                  out_dir / coreset_file(ratio, "jsonl"))}
        idx, w = check_subset(coreset.indices, coreset.weights, len(records), source=str(npz))
        idx, w = materialize(idx, w, materialize_weights, seed)
        for kind, suffix in TRAINER_FILES.items():
            rows = _rows(records, idx, w, kind, assistant_turns)
            result[ratio][kind] = write_jsonl(out_dir / coreset_file(ratio, suffix), rows)
            if kind == "sharegpt":
                dropped[ratio] = sum(llamafactory_drops(r) for r in rows)
    for ratio, n in dropped.items():
        if n:
            log.warning("ratio %.2f: LLaMA-Factory would drop %d ShareGPT rows (turns that do not alternate even "
                        "after merging, e.g. a conversation opening with an assistant turn)", ratio, n)
    columns = tuple(c for c in ("system", "history") if any(c in r for r in records))
    _write_trainer_files(out_dir, result, name, schema, columns=columns, assistant_turns=assistant_turns,
                         dropped=dropped, materialized=materialize_weights)
    return result


def _write_trainer_files(out_dir: Path, exported: dict[float, dict[str, Path]], name: str, schema: str, *,
                         columns: tuple[str, ...], assistant_turns: str, dropped: dict[float, int],
                         materialized: str) -> None:
    """dataset_info.json (LLaMA-Factory), axolotl_datasets.yaml and EXPORTS.md for the exported files."""
    import yaml

    from mint._io import atomic_write_text

    info: dict[str, Any] = {}
    stanzas: list[dict[str, Any]] = []
    for ratio, paths in sorted(exported.items()):
        tag = f"{ratio:.2f}"
        info[f"{name}_{tag}"] = llamafactory_entry(paths["sharegpt"].name, "sharegpt")
        stanzas.append(axolotl_stanza(paths["messages"].resolve(), "messages", assistant_turns=assistant_turns))
        if schema == "alpaca" and materialized == "none":
            info[f"{name}_{tag}_alpaca"] = llamafactory_entry(paths["records"].name, "alpaca", columns=columns)
    replaced = merge_dataset_info(out_dir / "dataset_info.json", info)
    if replaced:
        log.info("%s: replaced the entries %s, kept the others", out_dir / "dataset_info.json", replaced)
    header = "# axolotl `datasets:` stanza for the exported coresets (pick one item per run).\n"
    header += "# " + WEIGHT_NOTE.replace("`", "") + "\n"
    stanza_text = yaml.safe_dump({"datasets": stanzas}, sort_keys=False)
    atomic_write_text(out_dir / "axolotl_datasets.yaml", header + stanza_text)
    atomic_write_text(out_dir / "EXPORTS.md", _exports_readme(out_dir, name, sorted(exported), schema,
                                                             assistant_turns=assistant_turns, dropped=dropped,
                                                             materialized=materialized))


def _exports_readme(out_dir: Path, name: str, ratios: list[float], schema: str, *, assistant_turns: str,
                    dropped: dict[float, int], materialized: str) -> str:
    rows = {"none": "one row per coreset record, with its `weight`",
            "replicate": "each record repeated round(weight) times (`weight` 1 per row)",
            "resample": "as many rows as the coreset, drawn with probability proportional to the weight "
                        "(`weight` 1 per row)"}[materialized]
    learned = ("every assistant turn" if assistant_turns == "all"
               else "the last assistant turn only (earlier ones carry `\"train\": false` in the messages file)")
    lost = ", ".join(f"{n} at ratio {r:.2f}" for r, n in sorted(dropped.items()) if n) or "none"
    lines = [
        "# Exported coresets", "",
        f"Input schema: {schema}; mint learned {learned}. Per ratio:", "",
        "- `coreset_R.jsonl`: the selected records in the input's own schema, with `weight` and "
        "`source_index` (0-based position in the input file) added;",
        f"- `coreset_R.messages.jsonl` (OpenAI `messages`), `coreset_R.sharegpt.jsonl` (LLaMA-Factory) and "
        f"`coreset_R.trl.jsonl` (TRL prompt/completion, one row per learned turn): {rows}.", "",
        f"Ratios: {', '.join(f'{r:.2f}' for r in ratios)}.", "",
        "## Weights", "", WEIGHT_NOTE, "",
        "## LLaMA-Factory", "",
        f"`dataset_info.json` holds one entry per ratio (`{name}_R`, ShareGPT format"
        + (f"; `{name}_R_alpaca`, Alpaca columns" if schema == "alpaca" and materialized == "none" else "")
        + f"), merged into any entries the file had. Use `dataset_dir: {out_dir}` and "
        f"`dataset: {name}_{ratios[0]:.2f}`"
        + ("; set `mask_history: true` to learn only the last turn, as mint did" if assistant_turns == "last" else "")
        + f". Rows LLaMA-Factory would drop: {lost}.", "",
        "## axolotl", "",
        "`axolotl_datasets.yaml` holds a `datasets:` list with one item per ratio (`roles_to_train: [assistant]`, "
        "`train_on_eos: turn`); copy the item you want into your axolotl config.", "",
        "## TRL", "",
        "`coreset_R.trl.jsonl` loads with `datasets.load_dataset(\"json\", data_files=...)` for `SFTTrainer`, which "
        "learns the completions only.", "",
    ]
    return "\n".join(lines)
