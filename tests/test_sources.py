"""mint.sources: every format reads into the same records, errors keep file and line or row, the
fingerprint of a file is its sha256, a hub id offline is a clear error."""
from __future__ import annotations

import pytest

from conftest import write_every_format as _write_all

from mint._io import sha256_file
from mint.errors import MintError
from mint.records import read_records, source_format, source_sha256

RECORDS = [
    {"instruction": "add 1 and 2", "input": "", "output": "3"},
    {"instruction": "reverse the word", "input": "apple", "output": "elppa"},
    {"instruction": "name a city", "input": "", "output": "Paris, \"the\" capital\nof France"},
]


def test_every_format_reads_the_same_records(tmp_path):
    paths = _write_all(tmp_path, RECORDS)
    for name, path in paths.items():
        got = read_records(path)
        assert got == RECORDS, name
        assert got.format == {"arrow_stream": "arrow"}.get(name, name)
        assert source_format(path) == got.format


def test_dataset_dict_folder_and_split(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS),
                          "test": datasets.Dataset.from_list(RECORDS[:1])}).save_to_disk(str(folder))
    assert read_records(folder) == RECORDS  # the train split by default
    assert read_records(f"{folder}:test") == RECORDS[:1]
    with pytest.raises(MintError, match=r"has the splits \['test', 'train'\]; name one"):
        read_records(f"{folder}:dev")


def test_fingerprints(tmp_path):
    paths = _write_all(tmp_path, RECORDS)
    for name in ("jsonl", "parquet", "csv", "arrow"):
        assert source_sha256(paths[name]) == sha256_file(paths[name])  # what earlier versions recorded
    folder = paths["dataset_folder"]
    assert source_sha256(folder) == source_sha256(folder)
    for name in ("again", "other"):
        (tmp_path / name).mkdir()
    again = _write_all(tmp_path / "again", RECORDS)
    assert source_sha256(again["dataset_folder"]) == source_sha256(folder)  # same data, same fingerprint
    other = _write_all(tmp_path / "other", RECORDS[:2])
    assert source_sha256(other["dataset_folder"]) != source_sha256(folder)


def test_tabular_nulls_are_absent_keys(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "input": None, "output": "b"}]), tmp_path / "n.parquet")
    assert read_records(tmp_path / "n.parquet") == [{"instruction": "a", "output": "b"}]
    (tmp_path / "short.csv").write_text("instruction,input,output\na,x,b\nc,y\n")
    assert read_records(tmp_path / "short.csv")[1] == {"instruction": "c", "input": "y"}


def test_bad_tabular_files_name_file_and_line(tmp_path):
    from mint.model.data import load_examples

    (tmp_path / "wide.csv").write_text("instruction,output\na,b\nc,d,e\n")
    with pytest.raises(MintError, match=r"wide.csv, line 3: 3 fields but the header has 2"):
        read_records(tmp_path / "wide.csv")
    (tmp_path / "short.csv").write_text("instruction,input,output\na,x,b\nc,y\n")
    with pytest.raises(MintError, match=r"short.csv, line 3 \(row 1\): missing key 'output'"):
        load_examples(tmp_path / "short.csv")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "response": "b"}]), tmp_path / "cols.parquet")
    with pytest.raises(MintError, match=r"cols.parquet, row 0: missing key 'output'"):
        load_examples(tmp_path / "cols.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(MintError, match=r"bad.parquet: not a readable parquet file"):
        read_records(tmp_path / "bad.parquet")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MintError, match="empty.csv is empty"):
        read_records(tmp_path / "empty.csv")
    (tmp_path / "header_only.csv").write_text("instruction,output\n")
    with pytest.raises(MintError, match="holds no records"):
        read_records(tmp_path / "header_only.csv")
    (tmp_path / "plain").mkdir()
    with pytest.raises(MintError, match="is a folder but not one written by datasets"):
        read_records(tmp_path / "plain")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert source_format("tatsu-lab/alpaca") == "hub" and source_format("tatsu-lab/alpaca:train") == "hub"
    with pytest.raises(MintError, match=r"'tatsu-lab/alpaca' is no local file.*HF_HUB_OFFLINE=1"):
        read_records("tatsu-lab/alpaca:train")
    with pytest.raises(MintError, match="HF_HUB_OFFLINE"):
        source_sha256("tatsu-lab/alpaca")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_records("missing.jsonl")  # a file name, not a hub id
