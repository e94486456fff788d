"""Feature store: shards, resume bookkeeping, merge, manifest checks on load."""
from __future__ import annotations

import numpy as np
import pytest

import mint
from mint.errors import MintError
from mint.model.store import FeatureStore, feature_file, load_features, read_manifest

SETTINGS = {"data_fingerprint": "abc", "model": "tiny", "grad_type": "sgd", "seed": 0}


def _rows(n, d, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32)


def _fill(store, sft, pt, shards=None):
    for k in range(store.num_shards) if shards is None else shards:
        a, b = store.shard_range(k)
        store.write_shard(k, {f"sft_{d}": sft[a:b, :int(d)] for d in store.dims}
                          | {f"pt_{d}": pt[a:b, :int(d)] for d in store.dims})


def test_write_merge_load_roundtrip(tmp_path):
    sft, pt = _rows(10, 6, 0)
    sft[3] = 0.0
    pt[3] = 0.0  # a zero row stays zero after normalisation
    store = FeatureStore(tmp_path / "f", n=10, dims=[4, 6], shard_size=4, settings=SETTINGS)
    store.prepare()
    _fill(store, sft, pt)
    assert not store.is_complete()
    with pytest.raises(MintError, match="incomplete"):
        load_features(tmp_path / "f")
    store.merge()
    assert store.is_complete() and not (tmp_path / "f" / "shards").exists()
    raw = mint.load_features(tmp_path / "f", dim=6, normalized=False)
    np.testing.assert_array_equal(raw["sft"], sft)
    np.testing.assert_array_equal(raw["pt"], pt)
    np.testing.assert_array_equal(raw["ifl"], sft - pt)
    norm = load_features(tmp_path / "f")  # default: the largest dimension, normalised
    assert norm["ifl"].shape == (10, 6) and norm["ifl"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(norm["pt"][[0, 1, 2, 4]], axis=1), 1.0, rtol=1e-6)
    assert not norm["pt"][3].any()
    np.testing.assert_allclose(load_features(tmp_path / "f", dim=4, normalized=False)["sft"], sft[:, :4])
    assert read_manifest(tmp_path / "f")["settings"]["model"] == "tiny"
    with pytest.raises(MintError, match="dimension 8"):
        load_features(tmp_path / "f", dim=8)


def test_load_refuses_mismatched_manifest(tmp_path):
    sft, pt = _rows(5, 3, 1)
    store = FeatureStore(tmp_path, n=5, dims=[3], shard_size=5, settings=SETTINGS)
    store.prepare()
    _fill(store, sft, pt)
    store.merge()
    assert load_features(tmp_path, expect={"data_fingerprint": "abc"})["sft"].shape == (5, 3)
    with pytest.raises(MintError, match="data_fingerprint"):
        load_features(tmp_path, expect={"data_fingerprint": "other"})
    with pytest.raises(MintError, match="not a feature store"):
        load_features(tmp_path / "nothing")


def test_prepare_refuses_other_settings_and_resumes_same(tmp_path):
    sft, pt = _rows(9, 2, 2)
    store = FeatureStore(tmp_path, n=9, dims=[2], shard_size=3, settings=SETTINGS)
    store.prepare()
    _fill(store, sft, pt, shards=[0, 2])
    again = FeatureStore(tmp_path, n=9, dims=[2], shard_size=3, settings=SETTINGS)
    again.prepare()  # same settings: resume
    assert [again.shard_done(k) for k in range(3)] == [True, False, True]
    # a corrupted shard is not counted as done
    (tmp_path / "shards" / "shard_00002.npz").write_bytes(b"junk")
    assert not again.shard_done(2)
    with pytest.raises(MintError, match="model"):
        FeatureStore(tmp_path, n=9, dims=[2], shard_size=3, settings=SETTINGS | {"model": "x"}).prepare()
    with pytest.raises(MintError, match="not complete"):
        again.merge()
    other = FeatureStore(tmp_path, n=9, dims=[2], shard_size=3, settings=SETTINGS | {"model": "x"})
    other.prepare(overwrite=True)
    assert not other.shard_done(0)


def test_non_finite_rows_are_never_written(tmp_path):
    store = FeatureStore(tmp_path, n=2, dims=["full"], shard_size=2, settings=SETTINGS)
    store.prepare()
    bad = np.array([[1.0, np.nan], [0.0, 1.0]], dtype=np.float32)
    with pytest.raises(MintError, match="non-finite"):
        store.write_shard(0, {"sft_full": bad, "pt_full": bad})
    assert not store.shard_done(0)
    assert not feature_file(tmp_path, "sft", None, False).exists()


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MintError, match="not a feature store"):
        FeatureStore(tmp_path, n=1, dims=[2], shard_size=1, settings=SETTINGS).prepare()


def test_float16_storage_of_the_normalised_rows(tmp_path):
    import json

    from mint.model.store import normalize_rows

    sft, pt = _rows(10, 6, 1)
    store = FeatureStore(tmp_path / "f", n=10, dims=[6], shard_size=4, settings=SETTINGS, normalized_dtype="float16")
    store.prepare()
    _fill(store, sft, pt)
    store.merge()
    norm = load_features(tmp_path / "f")
    assert norm["pt"].dtype == np.float16
    np.testing.assert_array_equal(norm["pt"], normalize_rows(pt).astype(np.float16))
    np.testing.assert_array_equal(norm["ifl"], normalize_rows(sft - pt).astype(np.float16))
    raw = load_features(tmp_path / "f", normalized=False)
    assert raw["sft"].dtype == np.float32 and np.array_equal(raw["sft"], sft)  # raw rows stay exact
    assert feature_file(tmp_path / "f", "pt", 6, True).stat().st_size < feature_file(tmp_path / "f", "pt", 6,
                                                                                      False).stat().st_size
    # the same folder with the other storage dtype is another store
    other = FeatureStore(tmp_path / "f", n=10, dims=[6], shard_size=4, settings=SETTINGS)
    with pytest.raises(MintError, match="normalized_dtype: store has 'float16', this run needs 'float32'"):
        other.prepare()
    # a manifest written before the option reads as float32
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    del manifest["normalized_dtype"]
    (tmp_path / "f" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MintError, match="expected \\(10, D\\) float32, found \\(10, 6\\) float16"):
        load_features(tmp_path / "f")
    with pytest.raises(MintError, match="unknown storage dtype 'int8'"):
        FeatureStore(tmp_path / "g", n=10, dims=[6], shard_size=4, settings=SETTINGS, normalized_dtype="int8")
