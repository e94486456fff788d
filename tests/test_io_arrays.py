"""mint._io.array_problem: the cheap header-and-size check of .npy and .npz files."""
from __future__ import annotations

import numpy as np

from mint._io import array_problem, atomic_save_npz


def test_whole_arrays_pass(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((50, 4), np.float32))
    atomic_save_npz(tmp_path / "c.npz", indices=np.arange(5), weights=np.ones(5))
    (tmp_path / "notes.txt").write_text("")
    assert array_problem(tmp_path / "a.npy") is None and array_problem(tmp_path / "c.npz") is None
    assert array_problem(tmp_path / "notes.txt") is None  # not an array file: not judged


def test_empty_truncated_and_foreign_files(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((50, 4), np.float32))
    whole = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "cut.npy").write_bytes(whole[:300])
    (tmp_path / "text.npy").write_text("not numpy")
    assert array_problem(tmp_path / "empty.npy") == "is empty (0 bytes)"
    assert array_problem(tmp_path / "cut.npy") == f"is truncated: its header describes {len(whole)} bytes, the file holds 300"
    assert array_problem(tmp_path / "text.npy").startswith("is not a readable .npy file (")
    atomic_save_npz(tmp_path / "c.npz", indices=np.arange(500))
    zipped = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(zipped[:-40])  # the zip directory at its end is gone
    assert array_problem(tmp_path / "cut.npz").startswith("is not a readable .npz file (")
