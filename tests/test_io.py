import numpy as np

from mint._io import atomic_save_npz, atomic_write_json, read_json, sha256_file, versions


def test_atomic_json_is_deterministic_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "x.json"
    atomic_write_json(p, {"b": np.int64(2), "a": np.float32(0.5), "arr": np.arange(3)})
    first = p.read_bytes()
    atomic_write_json(p, {"a": 0.5, "arr": [0, 1, 2], "b": 2})
    assert p.read_bytes() == first
    assert read_json(p) == {"a": 0.5, "arr": [0, 1, 2], "b": 2}
    assert [f.name for f in p.parent.iterdir()] == ["x.json"]


def test_npz_same_arrays_same_bytes(tmp_path, monkeypatch):
    import time

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    atomic_save_npz(a, indices=np.arange(4), weights=np.ones(4))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400.0)  # a day later: no date in the bytes
    atomic_save_npz(b, indices=np.arange(4), weights=np.ones(4))
    assert a.read_bytes() == b.read_bytes()
    assert sha256_file(a) == sha256_file(b)
    with np.load(a) as z:
        assert z["indices"].tolist() == [0, 1, 2, 3]


def test_versions_names_mint_and_numpy():
    v = versions()
    assert v["mint"] and v["numpy"] == np.__version__
