"""Exports: the selected records round-trip, in their own schema and as chat messages."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from conftest import make_alpaca_records
from mint.errors import MintError
from mint.pipeline.export import export_subset, read_export, to_messages


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
    [([0, 12], None, "outside the data set"), ([1, 1], None, "duplicates"),
     ([0, 1], [1.0], "1 weights for 2 indices"), ([0], [float("nan")], "finite")],
)
def test_export_subset_rejects_bad_coresets(tmp_path, indices, weights, match):
    with pytest.raises(MintError, match=match):
        export_subset(make_alpaca_records(12), indices, weights, tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()


def _selection(folder, coresets: dict, *, n: int | None, data_sha256: str = "", listed=None):
    """A selection folder as `mint select` writes it: coreset files and the summary listing them."""
    from mint._io import atomic_write_json
    from mint.pipeline.coresets import coreset_file, save_coreset

    for ratio, (idx, w) in coresets.items():
        save_coreset(folder / coreset_file(ratio), np.array(idx), np.array(w, dtype=float), n=n or 0,
                     data_sha256=data_sha256)
    summary = {"subsets": [{"ratio": r, "file": coreset_file(r)} for r in (listed or coresets)]}
    if n is not None:
        summary["n"] = n
    atomic_write_json(folder / "summary.json", summary)
    return folder


def test_export_coreset_writes_every_ratio_and_trainer_configs(tmp_path):
    import yaml

    from mint._io import atomic_save_npz
    from mint.pipeline.export import export_coreset

    records = make_alpaca_records(20)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    sel = _selection(tmp_path / "select", {0.1: ([4, 9], [12, 8]), 0.2: ([4, 9, 1, 17], [6, 5, 5, 4])}, n=20)
    out = export_coreset(data, sel, tmp_path / "exp")
    assert sorted(out) == [0.1, 0.2]
    back, idx, w = read_export(out[0.2]["records"])
    assert back == [records[i] for i in (4, 9, 1, 17)] and w.tolist() == [6, 5, 5, 4]
    msgs, idx2, _ = read_export(out[0.2]["messages"])
    assert idx2.tolist() == [4, 9, 1, 17] and msgs[0]["messages"] == to_messages(records[4])
    info = json.loads((tmp_path / "exp" / "dataset_info.json").read_text())
    assert info["mint_coreset_0.10"]["file_name"] == "coreset_0.10.sharegpt.jsonl"
    assert info["mint_coreset_0.10_alpaca"]["columns"]["prompt"] == "instruction"
    for entry in info.values():
        assert (tmp_path / "exp" / entry["file_name"]).is_file()
    stanza = yaml.safe_load((tmp_path / "exp" / "axolotl_datasets.yaml").read_text())
    assert [s["path"] for s in stanza["datasets"]] == [str(out[r]["messages"].resolve()) for r in (0.1, 0.2)]
    assert "ignore the `weight` field" in (tmp_path / "exp" / "EXPORTS.md").read_text()

    with pytest.raises(MintError, match="no coreset for ratio"):
        export_coreset(data, sel, tmp_path / "exp2", ratios=[0.3])
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in records[:10]))
    with pytest.raises(MintError, match="selected from 20 records but .*small.jsonl holds 10"):
        export_coreset(small, sel, tmp_path / "exp3")
    # a file without the record count: the indices themselves are checked
    old = _selection(tmp_path / "old", {0.2: ([4, 9, 1, 17], [6, 5, 5, 4])}, n=None)
    with np.load(old / "coreset_0.20.npz") as z:
        atomic_save_npz(old / "coreset_0.20.npz", indices=z["indices"], weights=z["weights"])
    with pytest.raises(MintError, match="index 17 is outside the data set of 10 records"):
        export_coreset(small, old, tmp_path / "exp4")
    # the coresets are the ones the summary lists, whatever other files lie there
    only = _selection(tmp_path / "only", {0.1: ([4, 9], [12, 8]), 0.2: ([4, 9, 1, 17], [6, 5, 5, 4])}, n=20,
                      listed=[0.1])
    assert sorted(export_coreset(data, only, tmp_path / "exp5")) == [0.1]


def test_export_coreset_refuses_a_selection_made_on_other_data(tmp_path):
    from mint._io import atomic_write_json, sha256_file
    from mint.pipeline.export import export_coreset

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(20)))
    sel = _selection(tmp_path / "select", {0.1: ([4, 9], [12, 8])}, n=20, data_sha256=sha256_file(data))
    export_coreset(data, sel, tmp_path / "ok")
    sel = _selection(tmp_path / "other", {0.1: ([4, 9], [12, 8])}, n=20, data_sha256="0" * 64)
    with pytest.raises(MintError, match="selected from a different data file"):
        export_coreset(data, sel, tmp_path / "bad")
    sel = _selection(tmp_path / "bigger", {0.1: ([4, 9], [12, 8])}, n=21)
    with pytest.raises(MintError, match="selected from 21 records"):
        export_coreset(data, sel, tmp_path / "bad")
    atomic_write_json(sel / "summary.json", {"n": 21})
    with pytest.raises(MintError, match="not a selection summary"):
        export_coreset(data, sel, tmp_path / "bad")


def test_mint_export_command(tmp_path, capsys):
    from mint.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(20)))
    _selection(tmp_path / "sel", {0.1: ([3, 5], [11, 9])}, n=20)
    assert main(["export", "--data", str(data), "--selection", str(tmp_path / "sel"),
                 "--output_dir", str(tmp_path / "out")]) == 0
    assert "ratio 0.10" in capsys.readouterr().out
    assert read_export(tmp_path / "out" / "coreset_0.10.jsonl")[1].tolist() == [3, 5]
    assert main(["export", "--data", str(data), "--selection", str(tmp_path / "missing")]) == 2
    assert "selection folder not found" in capsys.readouterr().err


CHATS = [
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}, {"role": "user", "content": "add 1 and 2"},
                  {"role": "assistant", "content": "3"}]},
    {"messages": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"},
                  {"role": "assistant", "content": "both"}, {"role": "user", "content": "left over"}]},
    {"messages": [{"role": "user", "content": "add 1 and 2"},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]},
                  {"role": "tool", "content": "3"}, {"role": "assistant", "content": "it is 3"}]},
    {"messages": [{"role": "assistant", "content": "welcome"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}]},
]


def _llamafactory_read(folder, entry):
    """What LLaMA-Factory's ShareGPT converter makes of an exported file, following the entry's
    documented column and tag mapping: (system, [(role, content)...]) per kept row, and the drops."""
    cols, tags = entry["columns"], entry["tags"]
    sides = ({tags["user_tag"], tags["observation_tag"]}, {tags["assistant_tag"], tags["function_tag"]})
    kept, dropped = [], 0
    for line in (folder / entry["file_name"]).read_text().splitlines():
        row = json.loads(line)
        turns = row[cols["messages"]]
        if len(turns) % 2 or any(t[tags["role_tag"]] not in sides[k % 2] for k, t in enumerate(turns)):
            dropped += 1
            continue
        kept.append((row.get(cols["system"], ""), [(t[tags["role_tag"]], t[tags["content_tag"]]) for t in turns],
                     row["source_index"]))
    return kept, dropped


def test_trainer_files_follow_what_mint_learned(tmp_path, caplog):
    import yaml

    from mint.pipeline.export import export_coreset

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CHATS))
    sel = _selection(tmp_path / "sel", {0.5: ([0, 1, 2, 3], [2, 1, 0, 1])}, n=4)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "alpaca.json"}}))
    with caplog.at_level("WARNING"):
        out = export_coreset(data, sel, tmp_path / "out")[0.5]
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert info["alpaca_en"] == {"file_name": "alpaca.json"}  # merged, not overwritten
    kept, dropped = _llamafactory_read(tmp_path / "out", info["mint_coreset_0.50"])
    assert dropped == 1 and "LLaMA-Factory would drop 1 ShareGPT rows" in caplog.text  # the one opening with gpt
    assert "Rows LLaMA-Factory would drop: 1 at ratio 0.50" in (tmp_path / "out" / "EXPORTS.md").read_text()
    assert [k[2] for k in kept] == [0, 1, 2]
    assert kept[0][:2] == ("be brief", [("human", "hi"), ("gpt", "hello"), ("human", "add 1 and 2"), ("gpt", "3")])
    assert kept[1][1] == [("human", "one\n\ntwo"), ("gpt", "both")]  # same-side turns merged, tail dropped
    assert [role for role, _ in kept[2][1]] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(kept[2][1][1][1]) == {"name": "add", "arguments": {"a": 1, "b": 2}}
    stanza = yaml.safe_load((tmp_path / "out" / "axolotl_datasets.yaml").read_text())["datasets"][0]
    assert stanza["roles_to_train"] == ["assistant"] and stanza["train_on_eos"] == "turn"
    assert "message_field_training" not in stanza
    trl, idx, w = read_export(out["trl"])
    # one row per learned turn (record 0 has two), each a prefix of the conversation; weights kept per record
    assert idx.tolist() == [0, 0, 1, 2, 3, 3]
    assert trl[0] == {"prompt": CHATS[0]["messages"][:2], "completion": [CHATS[0]["messages"][2]]}
    assert trl[1] == {"prompt": CHATS[0]["messages"][:4], "completion": [CHATS[0]["messages"][4]]}
    assert w.tolist() == [1.0, 1.0, 1.0, 0.0, 0.5, 0.5]


def test_assistant_turns_last_marks_the_earlier_turns(tmp_path):
    import yaml

    from mint.pipeline.export import export_coreset

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in CHATS[:3]))
    sel = _selection(tmp_path / "sel", {0.5: ([0, 2], [2, 1])}, n=3)
    out = export_coreset(data, sel, tmp_path / "out", assistant_turns="last")[0.5]
    msgs, _, _ = read_export(out["messages"])
    assert msgs[0]["messages"][2] == {"role": "assistant", "content": "hello", "train": False}
    assert "train" not in msgs[0]["messages"][4]
    stanza = yaml.safe_load((tmp_path / "out" / "axolotl_datasets.yaml").read_text())["datasets"][0]
    assert stanza["message_field_training"] == "train"
    assert read_export(out["trl"])[1].tolist() == [0, 2]  # one row per record: the last turn
    assert "mask_history: true" in (tmp_path / "out" / "EXPORTS.md").read_text()


def test_alpaca_system_and_history_columns(tmp_path):
    from mint.pipeline.export import export_coreset

    records = [{"instruction": "add", "input": "1 2", "output": "3", "system": "be brief",
                "history": [["hi", "hello"]]}, {"instruction": "x", "output": "y"}]
    data = tmp_path / "a.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    export_coreset(data, _selection(tmp_path / "sel", {0.5: ([0], [2])}, n=2), tmp_path / "out")
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert info["mint_coreset_0.50_alpaca"]["columns"] == {"prompt": "instruction", "query": "input",
                                                           "response": "output", "system": "system",
                                                           "history": "history"}
    kept, _ = _llamafactory_read(tmp_path / "out", info["mint_coreset_0.50"])
    assert kept[0][:2] == ("be brief", [("human", "hi"), ("gpt", "hello"), ("human", "add\n\n1 2"), ("gpt", "3")])


def test_materialize_weights(tmp_path):
    from mint.pipeline.export import export_coreset, materialize

    idx, w = materialize([4, 9, 1], [3.0, 1.0, 0.0], "replicate")
    assert idx.tolist() == [4, 4, 4, 9] and w.tolist() == [1.0] * 4
    a, _ = materialize([4, 9, 1], [3.0, 1.0, 0.0], "resample", seed=3)
    b, _ = materialize([4, 9, 1], [3.0, 1.0, 0.0], "resample", seed=3)
    assert a.tolist() == b.tolist() and len(a) == 3 and 1 not in a.tolist()  # the coreset's size; weight 0 never
    draws = materialize(np.arange(3), [6.0, 3.0, 1.0], "resample", seed=0)[0]
    assert draws.size == 3
    many = np.concatenate([materialize(np.arange(3), [6.0, 3.0, 1.0], "resample", seed=s)[0] for s in range(300)])
    assert abs(np.mean(many == 0) - 0.6) < 0.05
    with pytest.raises(MintError, match="materialize_weights must be one of none, replicate, resample"):
        materialize([0], [1.0], "copy")
    with pytest.raises(MintError, match="rounds to 0 copies"):
        materialize([0], [0.4], "replicate")

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(20)))
    sel = _selection(tmp_path / "sel", {0.1: ([4, 9], [12, 8])}, n=20)
    out = export_coreset(data, sel, tmp_path / "rep", materialize_weights="replicate")[0.1]
    assert read_export(out["records"])[1].tolist() == [4, 9]  # the coreset itself
    _, idx, w = read_export(out["messages"])
    assert idx.tolist() == [4] * 12 + [9] * 8 and set(w.tolist()) == {1.0}
    first = export_coreset(data, sel, tmp_path / "r1", materialize_weights="resample", seed=7)[0.1]
    again = export_coreset(data, sel, tmp_path / "r2", materialize_weights="resample", seed=7)[0.1]
    assert first["sharegpt"].read_bytes() == again["sharegpt"].read_bytes()  # same seed, same bytes


def test_bad_dataset_info_is_refused(tmp_path):
    from mint.pipeline.export import export_coreset

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_alpaca_records(20)))
    sel = _selection(tmp_path / "sel", {0.1: ([4, 9], [12, 8])}, n=20)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "dataset_info.json").write_text("{broken")
    with pytest.raises(MintError, match=r"dataset_info.json exists but is not valid JSON"):
        export_coreset(data, sel, tmp_path / "out")
