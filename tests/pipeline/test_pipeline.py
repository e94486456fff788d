"""`mint run` end to end on the tiny model: outputs, no work on a second call, only the affected
steps redone after a config change, resume after an interrupt, refusal of a foreign run folder."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import make_alpaca_records
from mint.cli import main
from mint.pipeline.config import load_config
from mint.errors import MintError
from mint.pipeline import read_step, run_pipeline

pytestmark = pytest.mark.slow

ALL_STEPS = {"data", "warmup", "grads", "select", "export", "train_coreset", "train_random",
             "eval/base", "eval/coreset", "eval/random"}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def run_config(tmp_path, tiny_model_dir):
    import torch

    torch.set_num_threads(1)
    records = make_alpaca_records(40)
    train = _write(tmp_path / "train.jsonl", records[:32])
    held_out = _write(tmp_path / "eval.jsonl", records[32:])
    cfg = {
        "output_dir": str(tmp_path / "run"), "seed": 0, "threads": 1,
        "data": {"train": str(train), "eval": str(held_out), "max_length": 64},
        "model": {"name": str(tiny_model_dir), "device": "cpu"},
        "warmup": {"sample_ratio": 0.25, "epochs": 1, "lr": 1e-3},
        "grads": {"proj_dim": 32},
        "selection": {"ratios": [0.25, 0.5]},
        "train": {"ratio": 0.25, "epochs": 1, "lr": 1e-3},
        "eval": {"generate": True, "max_new_tokens": 4, "generate_limit": 4},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ran(result):
    return {name for name, info in result.steps.items() if info.ran}


def test_mint_run_end_to_end_then_nothing_to_do_then_only_affected_steps(run_config, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "--config", str(run_config)]) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "coreset" in out
    for rel in ("report.md", "summary.json", "config.yaml", "run.json", "select/coreset_0.25.npz",
                "export/coreset_0.25.jsonl", "export/coreset_0.50.messages.jsonl", "export/dataset_info.json",
                "train_coreset/adapter/adapter_config.json", "train_random/adapter/adapter_config.json",
                "eval/base/metrics.json", "eval/coreset/metrics.json", "eval/random/metrics.json"):
        assert (run_dir / rel).is_file(), rel
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["steps"]) == ALL_STEPS and all(s["ran"] for s in summary["steps"].values())
    assert summary["k"] == 8 and set(summary["metrics"]) == {"base", "coreset", "random"}
    report = (run_dir / "report.md").read_text()
    assert "| MINT coreset |" in report and "| random subset (same size) |" in report and "Time per step" in report
    # the training-loss curves of the warm-up and both trained models, from their Trainer log histories
    assert "![training loss](training_loss.png)" in report and "(warm-up, coreset, random)" in report
    assert (run_dir / "training_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the exported coreset is the trained one, and its weights sum to N
    exported = [json.loads(x) for x in (run_dir / "export/coreset_0.25.jsonl").read_text().splitlines()]
    assert len(exported) == 8 and sum(r["weight"] for r in exported) == 32
    # the saved config reproduces the run
    assert load_config(run_dir / "config.yaml") == load_config(run_config)

    # second invocation: nothing to do, and the adapter is untouched
    adapter = run_dir / "train_coreset/adapter/adapter_model.safetensors"
    mtime = adapter.stat().st_mtime_ns
    cfg = load_config(run_config)
    assert _ran(run_pipeline(cfg)) == set()
    assert adapter.stat().st_mtime_ns == mtime

    # one selection key: selection and what depends on it, not the warm-up, features or baselines
    changed = load_config(run_config, {"selection.alpha": 0.5})
    assert _ran(run_pipeline(changed)) == {"select", "export", "train_coreset", "eval/coreset"}
    assert read_step(run_dir, "select")["inputs"]["selection"]["alpha"] == 0.5
    # one evaluation key: only the evaluations
    changed = load_config(run_config, {"selection.alpha": 0.5, "eval.max_new_tokens": 3})
    assert _ran(run_pipeline(changed)) == {"eval/base", "eval/coreset", "eval/random"}
    # one training key: the three trained models' steps, not the selection
    changed = load_config(run_config, {"selection.alpha": 0.5, "eval.max_new_tokens": 3, "train.lr": 5e-4})
    assert _ran(run_pipeline(changed)) == {"train_coreset", "train_random", "eval/coreset", "eval/random"}
    # a new held-out file: only the evaluations (and the data step that records it)
    other = _write(tmp_path / "eval2.jsonl", make_alpaca_records(40)[28:36])
    changed = load_config(run_config, {"selection.alpha": 0.5, "eval.max_new_tokens": 3, "train.lr": 5e-4,
                                       "data.eval": str(other)})
    assert _ran(run_pipeline(changed)) == {"data", "eval/base", "eval/coreset", "eval/random"}


def test_interrupted_run_resumes_where_it_stopped(run_config, tmp_path, monkeypatch):
    import mint.model.train

    real = mint.model.train.train_lora
    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C during the coreset training (the warm-up uses it too)
        calls.append(args[2])
        if str(args[2]).endswith("train_coreset"):
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mint.model.train, "train_lora", interrupted)
    cfg = load_config(run_config)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    assert read_step(tmp_path / "run", "train_coreset")["status"] == "running"
    assert read_step(tmp_path / "run", "select")["status"] == "done"
    monkeypatch.setattr(mint.model.train, "train_lora", real)
    result = run_pipeline(cfg)
    assert _ran(result) == {"train_coreset", "train_random", "eval/base", "eval/coreset", "eval/random"}


def test_refuses_a_folder_holding_a_different_run(run_config, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cfg = load_config(run_config, {"output_dir": str(foreign)})
    with pytest.raises(MintError, match="not empty and was not made by `mint run`.*--overwrite"):
        run_pipeline(cfg)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"identity": {"model": "other", "train_data": "x"}}))
    with pytest.raises(MintError, match="holds a different run .differing: model, train_data"):
        run_pipeline(load_config(run_config))
    assert main(["run", "--config", str(run_config)]) == 2  # the CLI prints it as an error

    # --overwrite writes into the foreign folder, replacing only mint's own folders
    (foreign / "warmup").mkdir()
    (foreign / "warmup" / "stale.txt").write_text("old")
    cfg = load_config(run_config, {"output_dir": str(foreign), "data.eval": None, "train.random_baseline": False})
    run_pipeline(cfg, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine" and not (foreign / "warmup" / "stale.txt").exists()
    assert (foreign / "train_coreset" / "adapter" / "adapter_config.json").is_file()


def test_evaluation_file_in_another_schema_is_refused_before_any_training(run_config, tmp_path):
    chat = _write(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                          {"role": "assistant", "content": "hello"}]}])
    cfg = load_config(run_config, {"data.eval": str(chat)})
    with pytest.raises(MintError, match="chat.jsonl is in the chat schema but the training data .* is alpaca"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "warmup").exists()


def test_run_without_held_out_file_skips_evaluation(run_config, tmp_path):
    cfg = load_config(run_config, {"data.eval": None, "train.random_baseline": False, "train.full_baseline": True})
    result = run_pipeline(cfg)
    assert set(result.steps) == {"data", "warmup", "grads", "select", "export", "train_coreset", "train_full"}
    assert result.steps["train_full"].outputs["n_train"] == 32
    assert result.metrics == {}
    assert "evaluation skipped" in result.report.read_text()


def test_mint_run_on_multi_turn_sharegpt_parquet(tmp_path, tiny_model_dir):
    """A parquet file of multi-turn ShareGPT records runs through; `data.assistant_turns` is part of
    the keys of the steps that tokenize (it changes their ids here), not of the selection-only ones."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(1)
    rows = []
    for r in make_alpaca_records(24):
        question = (r["instruction"] + " " + r.get("input", "")).strip()
        rows.append({"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi there"},
                                       {"from": "human", "value": question}, {"from": "gpt", "value": r["output"]}]})
    pq.write_table(pa.Table.from_pylist(rows[:20]), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[20:]), tmp_path / "eval.parquet")
    overrides = {"output_dir": str(tmp_path / "run"), "threads": 1, "data.train": str(tmp_path / "train.parquet"),
                 "data.eval": str(tmp_path / "eval.parquet"), "data.max_length": 64, "model.name": str(tiny_model_dir),
                 "model.device": "cpu", "warmup.sample_ratio": 0.25, "warmup.epochs": 1, "grads.proj_dim": 16,
                 "selection.ratios": [0.25], "train.epochs": 1, "train.random_baseline": False}
    first = run_pipeline(load_config(None, overrides))
    assert read_step(tmp_path / "run", "warmup")["inputs"]["render"]["assistant_turns"] == "all"
    assert (tmp_path / "run" / "export" / "coreset_0.25.trl.jsonl").is_file()
    again = run_pipeline(load_config(None, {**overrides, "data.assistant_turns": "last"}))
    assert {"warmup", "grads", "train_coreset", "eval/base"} <= _ran(again)
    assert first.metrics["coreset"]["n_response_tokens"] > again.metrics["coreset"]["n_response_tokens"]


def test_a_rerun_hashes_and_reads_each_data_file_once(run_config, tmp_path, monkeypatch):
    """Nothing to do, and the data files (which take seconds each at a million records) are
    hashed once and read once per invocation, whatever number of steps use them."""
    from pathlib import Path

    import mint.pipeline.steps as steps

    run_pipeline(load_config(run_config))
    hashed, read = [], []
    real_sha, real_examples = steps.source_sha256, steps._examples
    monkeypatch.setattr(steps, "source_sha256", lambda source: hashed.append(Path(source).name) or real_sha(source))
    monkeypatch.setattr(steps, "_examples", lambda cfg, path: read.append(Path(path).name) or real_examples(cfg, path))
    again = run_pipeline(load_config(run_config))
    assert _ran(again) == set()
    assert sorted(hashed) == ["eval.jsonl", "train.jsonl"]
    assert sorted(read) == ["eval.jsonl", "train.jsonl"]


def test_mint_run_reads_a_save_to_disk_folder(tmp_path, tiny_model_dir):
    """`data.train` may be a `datasets` folder (not a file): the run checks it exists as mint.sources reads it."""
    import datasets
    import torch

    torch.set_num_threads(1)
    datasets.Dataset.from_list(make_alpaca_records(24)).save_to_disk(str(tmp_path / "train_ds"))
    overrides = {"output_dir": str(tmp_path / "run"), "threads": 1, "data.train": str(tmp_path / "train_ds"),
                 "data.max_length": 64, "model.name": str(tiny_model_dir), "model.device": "cpu",
                 "warmup.sample_ratio": 0.25, "warmup.epochs": 1, "grads.proj_dim": 16, "selection.ratios": [0.25],
                 "train.epochs": 1, "train.random_baseline": False}
    result = run_pipeline(load_config(None, overrides))
    assert result.steps["train_coreset"].outputs["n_train"] == 6
    with pytest.raises(FileNotFoundError, match="data file not found: .*nowhere_ds \\(config key data.train\\)"):
        run_pipeline(load_config(None, {**overrides, "data.train": str(tmp_path / "nowhere_ds")}))


def test_a_proxy_model_selects_and_the_named_model_trains(run_config, tmp_path, tiny_model_dir):
    """model.proxy: the warm-up and the features use the proxy, training and evaluation model.name;
    the report says which did what."""
    from conftest import build_tiny_model, build_tiny_tokenizer

    proxy = tmp_path / "proxy_model"
    tok = build_tiny_tokenizer()
    model = build_tiny_model(len(tok), seed=1)  # other weights, the same tokenizer family
    model.config.bos_token_id, model.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(proxy)
    tok.save_pretrained(proxy)
    cfg = load_config(run_config, {"model.proxy": str(proxy), "train.random_baseline": False, "eval.generate": False})
    result = run_pipeline(cfg)
    run_dir = result.run_dir
    manifest = lambda rel: json.loads((run_dir / rel / "manifest.json").read_text())  # noqa: E731
    assert manifest("warmup")["config"]["base_model"] == str(proxy)
    assert manifest("grads")["settings"]["model"] == str(proxy)
    assert manifest("train_coreset")["config"]["base_model"] == str(tiny_model_dir)
    report = (run_dir / "report.md").read_text()
    assert f"selected with `{proxy}`" in report and f"trained and evaluated: `{tiny_model_dir}`" in report
    assert json.loads((run_dir / "summary.json").read_text())["selection_model"] == str(proxy)
