"""Exports: the selected records round-trip, in their own schema and as chat messages."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from conftest import make_alpaca_records
from mint.errors import MintError
from mint.export import export_subset, read_export, to_messages


def test_export_subset_round_trips_original_schema(tmp_path):
    records = make_alpaca_records(12)
    before = copy.deepcopy(records)
    indices = np.array([7, 0, 3], dtype=np.int64)
    weights = np.array([5.0, 4.0, 3.0])
    path = export_subset(records, indices, weights, tmp_path / "c.jsonl")
    assert records == before  # the input is never modified
    back, idx, w = read_export(path)
    assert back == [records[i] for i in indices]
    assert idx.tolist() == [7, 0, 3]
    assert w.tolist() == [5.0, 4.0, 3.0]
    # whole-number weights are written as integers, fields appended after the record's own
    first = json.loads(path.read_text().splitlines()[0])
    assert list(first)[-2:] == ["weight", "source_index"] and first["weight"] == 5


def test_export_subset_messages_variant(tmp_path):
    records = [
        {"instruction": "add", "input": "1 2", "output": "3"},
        {"prompt": "p", "completion": "c"},
        {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                      {"role": "assistant", "content": "a"}], "task": "x"},
    ]
    path = export_subset(records, [0, 1, 2], [0.5, 1.5, 1.0], tmp_path / "m.jsonl", schema="messages")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0]["messages"] == [{"role": "user", "content": "add\n\n1 2"}, {"role": "assistant", "content": "3"}]
    assert rows[1]["messages"][1] == {"role": "assistant", "content": "c"}
    assert rows[2]["messages"] == records[2]["messages"]
    assert [r["weight"] for r in rows] == [0.5, 1.5, 1.0]
    assert to_messages(records[0])[0]["content"] == "add\n\n1 2"


@pytest.mark.parametrize(
    "indices, weights, match",
    [([0, 12], None, "outside the dataset"), ([1, 1], None, "duplicates"),
     ([0, 1], [1.0], "same length"), ([0], [float("nan")], "finite")],
)
def test_export_subset_rejects_bad_coresets(tmp_path, indices, weights, match):
    with pytest.raises(MintError, match=match):
        export_subset(make_alpaca_records(12), indices, weights, tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()
