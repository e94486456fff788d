"""Coreset files: the one writer and reader, the provenance check, and the listing from a
selection folder's summary.json (never from file names)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mint._io import sha256_file
from mint.errors import MintError
from mint.pipeline.coresets import check_source, coreset_file, list_coresets, load_coreset, same_ratio, save_coreset


def test_names():
    assert coreset_file(0.05) == "coreset_0.05.npz" and coreset_file(0.1, "jsonl") == "coreset_0.10.jsonl"
    assert same_ratio(0.1, 0.100001) and not same_ratio(0.1, 0.11)


def test_round_trip_and_same_bytes(tmp_path, alpaca_file):
    sha = sha256_file(alpaca_file)
    a = save_coreset(tmp_path / "a.npz", np.array([3, 1]), np.array([2.0, 22.0]), n=24, data_sha256=sha)
    b = save_coreset(tmp_path / "b.npz", np.array([3, 1]), np.array([2.0, 22.0]), n=24, data_sha256=sha)
    assert a.read_bytes() == b.read_bytes()
    c = load_coreset(a)
    assert c.indices.tolist() == [3, 1] and c.indices.dtype == np.int64
    assert c.weights.tolist() == [2.0, 22.0] and (c.n, c.data_sha256) == (24, sha)
    check_source(c, alpaca_file, 24)  # the right file passes


def test_provenance_check(tmp_path, alpaca_file):
    save_coreset(tmp_path / "c.npz", np.array([0]), np.array([24.0]), n=50, data_sha256="")
    with pytest.raises(MintError, match="selected from 50 records but .* holds 24"):
        check_source(load_coreset(tmp_path / "c.npz"), alpaca_file, 24)
    save_coreset(tmp_path / "d.npz", np.array([0]), np.array([24.0]), n=24, data_sha256="0" * 64)
    with pytest.raises(MintError, match="different data file"):
        check_source(load_coreset(tmp_path / "d.npz"), alpaca_file, 24)
    # "" = the selection did not know the file: only the count is checked
    save_coreset(tmp_path / "e.npz", np.array([0]), np.array([24.0]), n=24, data_sha256="")
    assert load_coreset(tmp_path / "e.npz").data_sha256 is None
    check_source(load_coreset(tmp_path / "e.npz"), alpaca_file, 24)


def test_older_files_are_checked_through_the_summary(tmp_path, alpaca_file):
    np.savez(tmp_path / "coreset_0.10.npz", indices=np.array([1, 2]), weights=np.array([1.0, 1.0]))
    (tmp_path / "summary.json").write_text(json.dumps({"n": 24, "inputs": {"data_sha256": "f" * 64}}))
    with pytest.raises(MintError, match="different data file"):
        check_source(load_coreset(tmp_path / "coreset_0.10.npz"), alpaca_file, 24)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_coreset(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MintError, match="not a readable .npz coreset file"):
        load_coreset(tmp_path / "junk.npz")
    np.savez(tmp_path / "noidx.npz", weights=np.ones(2))
    with pytest.raises(MintError, match="has no 'indices' array"):
        load_coreset(tmp_path / "noidx.npz")
    np.savez(tmp_path / "float.npz", indices=np.array([0.5]))
    with pytest.raises(MintError, match="1-D integer array"):
        load_coreset(tmp_path / "float.npz")


def test_listing_comes_from_the_summary(tmp_path):
    save_coreset(tmp_path / coreset_file(0.05), np.array([0]), np.array([1.0]), n=2, data_sha256="")
    save_coreset(tmp_path / coreset_file(0.5), np.array([0]), np.array([1.0]), n=2, data_sha256="")  # not listed
    with pytest.raises(MintError, match="no summary.json"):
        list_coresets(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"subsets": [{"ratio": 0.05, "file": coreset_file(0.05)}]}))
    assert list_coresets(tmp_path) == {0.05: tmp_path / "coreset_0.05.npz"}
    (tmp_path / "coreset_0.05.npz").unlink()
    with pytest.raises(MintError, match="listed in summary.json are missing"):
        list_coresets(tmp_path)
    with pytest.raises(FileNotFoundError):
        list_coresets(tmp_path / "nowhere")
