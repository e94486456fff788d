"""Coreset files: one name, one writer, one reader and one provenance check, used by `mint select`,
`mint train --coreset`, `mint export` and `mint run`.

A coreset file `coreset_{ratio:.2f}.npz` (uncompressed, byte-stable) holds

- `indices` (int64, greedy order) into the records of the data file it was selected from,
- `weights` (float64, summing to N for facility location),
- `n` (int64 scalar): the number of records of that data file,
- `data_sha256` (string scalar): its sha256, or "" when the selection did not know the file
  (features given as plain `.npy` files and no `--data`).

A selection folder lists its coresets in `summary.json` (`subsets`: ratio and file of each);
`list_coresets` reads that list, never the file names.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mint._io import atomic_save_npz, read_json
from mint.records import source_sha256
from mint.errors import MintError

__all__ = ["Coreset", "coreset_file", "same_ratio", "save_coreset", "load_coreset", "check_source",
           "list_coresets"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Coreset:
    path: Path
    indices: np.ndarray  # int64
    weights: np.ndarray | None  # float64; None for a file without weights (made by hand)
    n: int | None  # records of the data file it was selected from (None: not recorded)
    data_sha256: str | None  # sha256 of that file (None: not recorded)


def coreset_file(ratio: float, ext: str = "npz") -> str:
    """The file name of the coreset of `ratio`: `coreset_0.05.npz` (two decimals)."""
    return f"coreset_{float(ratio):.2f}.{ext}"


def same_ratio(a: float, b: float) -> bool:
    """Whether two ratios name the same coreset file."""
    return coreset_file(a) == coreset_file(b)


def save_coreset(path: str | os.PathLike, indices: np.ndarray, weights: np.ndarray, *, n: int,
                 data_sha256: str | None) -> Path:
    """Write a coreset file atomically (same arrays, same bytes)."""
    return atomic_save_npz(path, indices=np.asarray(indices, dtype=np.int64),
                           weights=np.asarray(weights, dtype=np.float64), n=np.int64(n),
                           data_sha256=np.array(data_sha256 or ""))


def load_coreset(path: str | os.PathLike) -> Coreset:
    """Read a coreset file (`indices`, and `weights`, `n`, `data_sha256` where present)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"coreset file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # a zip, pickle or format error: all mean "not a coreset file"
        raise MintError(f"{path}: not a readable .npz coreset file ({e}); pass a coreset_R.npz written by "
                        "`mint select`") from e
    if "indices" not in arrays:
        raise MintError(f"{path} has no 'indices' array; expected a coreset_R.npz written by `mint select`")
    indices = arrays["indices"]
    if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
        raise MintError(f"{path}: 'indices' must be a 1-D integer array, found shape {indices.shape} "
                        f"dtype {indices.dtype}")
    weights = arrays.get("weights")
    n = int(arrays["n"]) if "n" in arrays else arrays.get("n_records")
    sha = str(arrays["data_sha256"]) if "data_sha256" in arrays else None
    return Coreset(path, indices.astype(np.int64), None if weights is None else weights.astype(np.float64),
                   None if n is None else int(n), sha or None)


def _recorded_in_summary(folder: Path) -> tuple[int | None, str | None]:
    """(n, data sha256) from the summary.json of the selection folder, for coreset files written
    before they carried both."""
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        return None, None
    try:
        summary = read_json(summary_path)
    except (OSError, ValueError) as e:
        raise MintError(f"{summary_path} is unreadable ({e}); restore it or move the coreset file out of "
                        "that folder") from e
    if not isinstance(summary, dict):
        return None, None
    data = summary.get("data") if isinstance(summary.get("data"), dict) else {}
    inputs = summary.get("inputs") if isinstance(summary.get("inputs"), dict) else {}
    sha = data.get("sha256") or inputs.get("data_sha256")
    n = summary.get("n")
    return (n if isinstance(n, int) else None), (sha if isinstance(sha, str) else None)


def check_source(coreset: Coreset, data_path: str | os.PathLike, n_records: int, *,
                 data_sha256: str | None = None) -> None:
    """Refuse a coreset selected from another data file: its record count or its sha256 (from the
    file itself, else from its selection folder's summary.json) must match `data_path`
    (`data_sha256`: its fingerprint when the caller has it already). The indices themselves are
    checked where they are used (`mint.records.check_subset`)."""
    n, sha = coreset.n, coreset.data_sha256
    if n is None or sha is None:
        n_summary, sha_summary = _recorded_in_summary(coreset.path.parent)
        n = n if n is not None else n_summary
        sha = sha if sha is not None else sha_summary
    if n is not None and n != n_records:
        raise MintError(f"{coreset.path} was selected from {n} records but {data_path} holds {n_records}; "
                        "pass the data file the coreset was selected from")
    if sha is not None and sha != (data_sha256 or source_sha256(data_path)):
        raise MintError(f"{coreset.path} was selected from a different data file (sha256 differs from "
                        f"{data_path}); pass the data file the coreset was selected from")


def list_coresets(selection_dir: str | os.PathLike) -> dict[float, Path]:
    """ratio -> coreset file, as listed by the `summary.json` of a `mint select` folder."""
    folder = Path(selection_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"selection folder not found: {folder}")
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise MintError(f"{folder} is not a finished selection (no summary.json); run `mint select` with "
                        f"--output_dir {folder}")
    try:
        subsets = read_json(summary_path)["subsets"]
        found = {float(s["ratio"]): folder / s["file"] for s in subsets}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MintError(f"{summary_path} is unreadable or not a selection summary ({e}); run `mint select` "
                        "again") from e
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise MintError(f"{folder}: coreset file(s) {', '.join(missing)} listed in summary.json are missing; "
                        "run `mint select` again (with --overwrite) to rewrite them")
    return found
