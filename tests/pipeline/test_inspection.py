"""`mint inspect`: the same report from every format, counts that match the data, token lengths
that match what the pipeline tokenizes, one JSON object with --json."""
from __future__ import annotations

import json

import pytest

from conftest import make_alpaca_records, write_every_format
from mint.pipeline.inspection import inspect_data, inspect_text

# the same keys in every record, as a CSV file has them; the last one an exact duplicate
RECORDS = [{k: r[k] for k in ("instruction", "input", "output")} for r in make_alpaca_records(9)]
RECORDS.append(dict(RECORDS[3]))


def _without_source(report):
    return {k: v for k, v in report.items() if k not in ("source", "format")}


def test_every_format_gives_the_same_report(tmp_path):
    paths = write_every_format(tmp_path, RECORDS)
    reports = {name: inspect_data(path, progress=False) for name, path in paths.items()}
    first = _without_source(reports["jsonl"])
    for name, report in reports.items():
        assert _without_source(report) == first, name
    assert reports["parquet"]["format"] == "parquet" and reports["dataset_folder"]["format"] == "dataset_folder"
    assert first["schema"] == "alpaca" and first["records"] == 10
    assert first["duplicates"] == {"records": 2, "prompts": 2}  # records 1 and 7 were equal already
    assert first["empty_fields"] == {"input": 4}  # the records with no input
    assert first["turns"] == {"messages": 20, "learned_assistant_turns": 10, "multi_turn_records": 0,
                              "max_messages": 2}


def test_bad_records_are_all_listed(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": ""}, {"foo": 1},
            {"instruction": "c", "output": "d"}]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = inspect_data(path, progress=False)
    assert report["records"] == 4 and report["bad_records"]["count"] == 2
    assert report["bad_records"]["first"][0].endswith("d.jsonl, line 2 (record 1): 'output' is empty")
    assert "line 3 (record 2): no schema fits the keys ['foo']" in report["bad_records"]["first"][1]
    assert "bad records: 2" in inspect_text(report)


def test_turns_and_tokens(tmp_path, tiny_model_dir):
    from mint.model.data import load_examples, tokenize_examples
    from mint.model.modeling import load_tokenizer

    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": "add one and two"}, {"role": "assistant", "content": "three"}]},
            {"messages": [{"role": "user", "content": " ".join(["apple banana"] * 30)},
                          {"role": "assistant", "content": "sorted"}]}]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat))
    report = inspect_data(path, model=tiny_model_dir, max_length=64, progress=False)
    assert report["turns"] == {"messages": 6, "learned_assistant_turns": 3, "multi_turn_records": 1, "max_messages": 4}
    tok = report["tokens"]
    assert tok["template"] == "chat" and tok["response_end"] == "<|im_end|>"
    full = tokenize_examples(load_examples(path), load_tokenizer(tiny_model_dir), max_length=6496)
    assert tok["total"]["max"] == max(t.sft_length for t in full)
    assert tok["truncated"] == sum(t.sft_length > 64 for t in full) == 1
    assert tok["prompt_fills_max_length"] == 1
    last = inspect_data(path, model=tiny_model_dir, assistant_turns="last", progress=False)
    assert last["turns"]["learned_assistant_turns"] == 2
    assert "max_length 64 would truncate 1 records" in inspect_text(report)


@pytest.mark.parametrize("as_json", [True, False])
def test_mint_inspect_command(tmp_path, capsys, as_json):
    from mint.cli import main

    path = write_every_format(tmp_path, RECORDS)["csv"]
    assert main(["inspect", "--data", str(path), *(["--json"] if as_json else [])]) == 0
    out = capsys.readouterr().out
    if as_json:
        report = json.loads(out)
        assert report["format"] == "csv" and report["records"] == 10 and "tokens" not in report
    else:
        assert out.startswith(f"source: {path} (csv, alpaca schema)")
    assert main(["inspect", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
