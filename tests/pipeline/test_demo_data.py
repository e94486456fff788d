"""The built-in demo data: deterministic, unbalanced across families, disjoint splits."""
from __future__ import annotations

import collections

from mint.pipeline.demo_data import FAMILIES, generate_demo_data, write_demo_data
from mint.records import read_records


def test_demo_data_is_deterministic_unbalanced_and_disjoint(tmp_path):
    train, held_out = generate_demo_data(200, 50, seed=0)
    assert (train, held_out) == generate_demo_data(200, 50, seed=0)
    assert len(train) == 200 and len(held_out) == 50
    counts = collections.Counter(r["task"] for r in train)
    assert set(counts) == set(FAMILIES)
    assert counts["arithmetic"] > 2 * counts["facts"]  # unbalanced on purpose
    prompts = {(r["instruction"], r["input"]) for r in train}
    assert not prompts & {(r["instruction"], r["input"]) for r in held_out}
    # a few answers checked by hand
    for r in train:
        if r["task"] == "sorting" and "ascending" in r["instruction"]:
            nums = [int(x) for x in r["input"].split(", ")]
            assert r["output"] == ", ".join(map(str, sorted(nums)))
        if r["instruction"] == "Reverse the letters of the word.":
            assert r["output"] == r["input"][::-1]

    train_path, eval_path = write_demo_data(tmp_path, 200, 50)
    assert read_records(train_path) == train and read_records(eval_path) == held_out
    assert train_path.read_bytes() == write_demo_data(tmp_path / "again", 200, 50)[0].read_bytes()
