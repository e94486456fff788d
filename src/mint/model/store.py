"""The on-disk feature store: resumable shards, a manifest, and memory-mappable matrices.

Layout of a store folder::

    manifest.json                  what made the features, and whether they are complete
    shards/shard_00003.npz         raw SFT and PT rows of examples [3*S, 4*S), per dimension
    shards/shard_00003.done        completion marker (index range + sha256 of the .npz)
    features/{kind}_{dim}.npy      after the merge: raw float32 (N, D), kind in sft/pt/ifl
    features/{kind}_{dim}_normalized.npy   the same rows L2-normalised (zero rows stay zero); float32,
                                   or float16 with `normalized_dtype="float16"` (half the disk and I/O
                                   of what the selection reads; the raw rows stay float32)

`dim` is the projection dimension, or `full` for raw gradients. Shards are written
atomically and then marked done, so a run killed at any point resumes from the last complete
shard; the shard boundaries (and the batches inside a shard) do not depend on the
interruption, so a resumed run gives the same bytes as an uninterrupted one. Shards are
deleted once the merged matrices and the final manifest are written.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mint._io import array_problem, atomic_save_npz, atomic_write_json, read_json, sha256_file
from mint._folders import own_entries
from mint.choices import FEATURE_KINDS as KINDS
from mint.choices import STORAGE_DTYPES
from mint.errors import MintError

__all__ = ["FeatureStore", "read_manifest", "load_features", "feature_file", "KINDS", "FORMAT"]

log = logging.getLogger(__name__)

FORMAT = "mint-features"
FORMAT_VERSION = 1


def _dim_label(dim) -> str:
    return "full" if dim in (None, "full") else str(int(dim))


def feature_file(path: str | os.PathLike, kind: str, dim, normalized: bool) -> Path:
    suffix = "_normalized" if normalized else ""
    return Path(path) / "features" / f"{kind}_{_dim_label(dim)}{suffix}.npy"


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a feature store folder (MintError when it is not one)."""
    file = Path(path) / "manifest.json"
    if not file.is_file():
        raise MintError(f"{path}: not a feature store (no manifest.json); run `mint grads` to create one")
    try:
        manifest = read_json(file)
    except (OSError, json.JSONDecodeError) as e:
        raise MintError(f"{file}: unreadable manifest ({e}); delete the folder and run `mint grads` again") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MintError(f"{file}: not a mint feature store manifest (format != {FORMAT!r})")
    return manifest


def _mismatches(settings: dict, expect: dict) -> list[str]:
    out = []
    for key, want in expect.items():
        have = settings.get(key, "<missing>")
        # JSON turns tuples into lists; compare through a JSON round trip.
        if json.loads(json.dumps(have, default=str)) != json.loads(json.dumps(want, default=str)):
            out.append(f"{key}: store has {have!r}, expected {want!r}")
    return out


class FeatureStore:
    """Writer side of a store: shard bookkeeping, resume checks and the final merge.

    `settings` identifies the features (data fingerprint, model, adapter hash, gradient type,
    projection, seed, ...): a folder holding a store with other settings is refused unless
    `overwrite` is given. `info` is recorded but may differ on resume (batch size, processes).
    """

    def __init__(self, path: str | os.PathLike, *, n: int, dims: list, shard_size: int,
                 settings: dict, info: dict | None = None, normalized_dtype: str = "float32"):
        if normalized_dtype not in STORAGE_DTYPES:
            raise MintError(f"unknown storage dtype {normalized_dtype!r} for the normalised features; use one of "
                            f"{', '.join(STORAGE_DTYPES)}")
        if n < 1:
            raise MintError("the data set is empty; nothing to compute")
        if shard_size < 1:
            raise MintError(f"shard_size must be >= 1, got {shard_size}")
        self.path = Path(path)
        self.n = int(n)
        self.dims = [_dim_label(d) for d in dims]
        self.shard_size = int(shard_size)
        self.settings = json.loads(json.dumps(settings, default=str))
        self.info = dict(info or {})
        self.normalized_dtype = normalized_dtype

    # --- bookkeeping -------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return math.ceil(self.n / self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        return k * self.shard_size, min(self.n, (k + 1) * self.shard_size)

    def _shard_file(self, k: int) -> Path:
        return self.path / "shards" / f"shard_{k:05d}.npz"

    def _marker(self, k: int) -> Path:
        return self.path / "shards" / f"shard_{k:05d}.done"

    def _manifest(self, complete: bool) -> dict:
        from mint._io import versions

        return {"format": FORMAT, "format_version": FORMAT_VERSION, "complete": complete,
                "n": self.n, "dims": self.dims, "kinds": list(KINDS), "dtype": "float32",
                "normalized_dtype": self.normalized_dtype,
                "shard_size": self.shard_size, "settings": self.settings, "info": self.info,
                "versions": versions()}

    def is_complete(self) -> bool:
        try:
            return bool(read_manifest(self.path).get("complete"))
        except MintError:
            return False

    def prepare(self, *, overwrite: bool = False) -> None:
        """Create the folder, or check that an existing store belongs to these settings."""
        manifest_file = self.path / "manifest.json"
        if manifest_file.exists():
            if overwrite:
                self.clear()
            else:
                old = read_manifest(self.path)
                problems = _mismatches(old.get("settings", {}), self.settings)
                old.setdefault("normalized_dtype", "float32")  # stores written before the option
                for key, want in (("n", self.n), ("dims", self.dims), ("shard_size", self.shard_size),
                                  ("normalized_dtype", self.normalized_dtype)):
                    if old.get(key) != want:
                        problems.append(f"{key}: store has {old.get(key)!r}, this run needs {want!r}")
                if problems:
                    raise MintError(
                        f"{self.path} already holds features made with other settings ("
                        + "; ".join(problems) + "). Use another --output_dir, or pass --overwrite to replace them.")
                return
        elif own_entries(self.path) and not overwrite:
            raise MintError(f"{self.path} exists and is not a feature store; choose an empty or new --output_dir")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest_file, self._manifest(complete=False))

    def clear(self) -> None:
        """Remove what a store writes (and nothing else) from the folder."""
        for sub in ("shards", "features"):
            shutil.rmtree(self.path / sub, ignore_errors=True)
        (self.path / "manifest.json").unlink(missing_ok=True)

    def damage(self) -> str | None:
        """Why the merged feature files cannot be read (missing, truncated), or None."""
        for dim in self.dims:
            for kind in KINDS:
                for normalized in (False, True):
                    file = feature_file(self.path, kind, dim, normalized)
                    problem = "is missing" if not file.is_file() else array_problem(file)
                    if problem:
                        return f"{file} {problem}"
        return None

    def shard_done(self, k: int) -> bool:
        marker, file = self._marker(k), self._shard_file(k)
        if not (marker.is_file() and file.is_file()):
            return False
        try:
            info = read_json(marker)
        except (OSError, json.JSONDecodeError):
            return False
        start, end = self.shard_range(k)
        return info.get("start") == start and info.get("end") == end and info.get("sha256") == sha256_file(file)

    def write_shard(self, k: int, rows: dict[str, np.ndarray]) -> None:
        """`rows`: {"sft_<dim>": (m, D), "pt_<dim>": (m, D)} for the m examples of shard k."""
        start, end = self.shard_range(k)
        for key, arr in rows.items():
            if arr.shape[0] != end - start or arr.dtype != np.float32:
                raise ValueError(f"shard {k} {key}: expected ({end - start}, D) float32, got {arr.shape} {arr.dtype}")
            if not np.isfinite(arr).all():  # gradients are checked earlier; never write non-finite rows
                raise MintError(f"shard {k} ({key}) holds non-finite values; nothing was written")
        file = self._shard_file(k)
        atomic_save_npz(file, **rows)
        atomic_write_json(self._marker(k), {"shard": k, "start": start, "end": end, "sha256": sha256_file(file)})

    # --- merge ---------------------------------------------------------------------------
    def merge(self, *, progress: bool = False) -> None:
        """Concatenate the shards into one raw and one normalised .npy per kind and dim,
        streaming through memory maps, then write the final manifest and drop the shards.
        (At N = 52,000 and D = 8192 that is 10 GB of writes: hence the progress bar.)"""
        from tqdm.auto import tqdm

        missing = [k for k in range(self.num_shards) if not self.shard_done(k)]
        if missing:
            raise MintError(f"{self.path}: shards {missing[:10]} are not complete; run the same command again")
        (self.path / "features").mkdir(exist_ok=True)
        bar = tqdm(total=self.n * len(self.dims), unit="ex", desc="merge", disable=not progress)
        for dim in self.dims:
            with np.load(self._shard_file(0)) as first:
                width = first[f"sft_{dim}"].shape[1]
            outs, tmps = {}, {}
            for kind in KINDS:
                for normalized in (False, True):
                    final = feature_file(self.path, kind, dim, normalized)
                    tmp = final.with_name(f".{final.name}.tmp")
                    tmps[kind, normalized] = (tmp, final)
                    dtype = self.normalized_dtype if normalized else "float32"
                    outs[kind, normalized] = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                                                       shape=(self.n, width))
            for k in range(self.num_shards):
                start, end = self.shard_range(k)
                with np.load(self._shard_file(k)) as shard:
                    rows = {"sft": shard[f"sft_{dim}"], "pt": shard[f"pt_{dim}"]}
                rows["ifl"] = rows["sft"] - rows["pt"]
                for kind in KINDS:
                    outs[kind, False][start:end] = rows[kind]
                    outs[kind, True][start:end] = normalize_rows(rows[kind])
                bar.update(end - start)
            for arr in outs.values():
                arr.flush()
            outs.clear()  # close the memory maps before the renames
            for tmp, final in tmps.values():
                os.replace(tmp, final)
        bar.close()
        atomic_write_json(self.path / "manifest.json", self._manifest(complete=True))
        shutil.rmtree(self.path / "shards", ignore_errors=True)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, in float32; all-zero rows stay zero."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def load_features(path: str | os.PathLike, dim=None, normalized: bool = True, *,
                  expect: dict[str, Any] | None = None, mmap: bool = True) -> dict[str, np.ndarray]:
    """Feature matrices of a complete store: {"sft", "pt", "ifl"} -> (N, D) float32 (the
    normalised ones float16 in a store written with `normalized_dtype="float16"`), in dataset order.

    `dim`: the projection dimension to read (None: the only one stored, or the largest);
    `expect`: settings the store must have been made with, e.g.
    `{"data_fingerprint": ..., "model": ...}` (see `read_manifest(path)["settings"]`); a
    mismatch raises MintError. With `mmap` the arrays are read-only memory maps."""
    manifest = read_manifest(path)
    if not manifest.get("complete"):
        raise MintError(f"{path}: the feature store is incomplete (an interrupted run?); "
                        "run the same `mint grads` command again to finish it")
    if expect:
        problems = _mismatches(manifest.get("settings", {}), expect)
        if problems:
            raise MintError(f"{path}: features were made with other settings: " + "; ".join(problems)
                            + ". Recompute them with `mint grads` for this data/model.")
    dims = manifest["dims"]
    if dim is None:
        label = max(dims, key=lambda d: math.inf if d == "full" else int(d))
        if len(dims) > 1:
            log.info("%s holds dims %s; using %s", path, dims, label)
    else:
        label = _dim_label(dim)
        if label not in dims:
            raise MintError(f"{path}: no features of dimension {label}; the store has {', '.join(dims)}")
    n = manifest["n"]
    out = {}
    for kind in KINDS:
        file = feature_file(path, kind, label, normalized)
        if not file.is_file():
            raise MintError(f"{file}: missing from the feature store; run the same `mint grads` command again "
                            "(it recomputes a damaged store)")
        problem = array_problem(file)
        if problem:
            raise MintError(f"{file} {problem}: the feature store is damaged; run the same `mint grads` command "
                            "again (it recomputes a damaged store)")
        arr = np.load(file, mmap_mode="r" if mmap else None)
        want = manifest.get("normalized_dtype", "float32") if normalized else "float32"
        if arr.dtype != np.dtype(want) or arr.ndim != 2 or arr.shape[0] != n:
            raise MintError(f"{file}: expected ({n}, D) {want}, found {arr.shape} {arr.dtype}; the store is damaged")
        out[kind] = arr
    return out
