"""Small shared helpers: atomic writes, fingerprints and provenance.

Every artifact the toolkit writes goes through these functions, so that an interrupted
run never leaves a half-written file behind and every file records what produced it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "atomic_save_npz",
    "sha256_file",
    "sha256_bytes",
    "versions",
    "read_json",
    "array_problem",
    "available_memory",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Deterministic JSON (sorted keys, fixed indent) written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, ensure_ascii=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """An uncompressed .npz written atomically, byte-identical for identical arrays.

    `numpy.savez` stamps each zip entry with the current time; here every entry gets a fixed
    date so that the same seed gives the same bytes."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages that can change results, for provenance records.
    Only packages already imported are asked, so this never triggers a heavy import."""
    from mint import __version__

    out = {"mint": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "transformers", "peft", "accelerate"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "unknown")
    return out


def _npy_data_bytes(f) -> tuple[int, int] | None:
    """(header length, data bytes) from the .npy header at the position of `f`; None for object arrays."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read_header(f)
    if dtype.hasobject:
        return None
    return f.tell(), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def array_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a `.npy` or `.npz` file, from its headers and size alone (None: nothing
    found, or another kind of file): a cheap check before a file is memory-mapped or trusted.
    The answer completes a sentence that starts with the file name ("is empty (0 bytes)")."""
    import zipfile

    path = Path(path)
    if path.suffix not in (".npy", ".npz"):
        return None
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                found = _npy_data_bytes(f)
            if found is not None and size < sum(found):
                return f"is truncated: its header describes {sum(found)} bytes, the file holds {size}"
            return None
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".npy"):
                    with zf.open(info) as member:
                        found = _npy_data_bytes(member)
                    if found is not None and info.file_size < sum(found):
                        return f"is damaged: its array {info.filename} is truncated"
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        return f"is not a readable {path.suffix} file ({e})"
    return None


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where unreadable): the memory limit of
    `mint select` and of the feature step on the CPU."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
