"""Step records verify their outputs before a step counts as up to date: a missing, resized or
damaged output redoes the step (with a log line saying why). Data-set sizes are checked before
the warm-up. End to end: a truncated feature file in a finished `mint run` is recomputed."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import yaml

from conftest import make_alpaca_records
from mint.errors import MintError
from mint.pipeline import read_step
from mint.pipeline.config import load_config
from mint.pipeline.runner import Run


def _writer(calls):
    def do(folder):
        calls.append(folder.name)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "x.npy", np.arange(100, dtype=np.float32))
        (folder / "sub").mkdir(exist_ok=True)
        (folder / "sub" / "notes.json").write_text('{"a": 1}')
        (folder / ".partial.tmp").write_text("a temporary file is not an output")
        return {"dir": folder.name}
    return do


def test_records_list_their_outputs_and_a_damaged_one_redoes_the_step(tmp_path, caplog):
    run, calls = Run(tmp_path), []
    run.step("s", {"k": 1}, _writer(calls))
    assert read_step(tmp_path, "s")["files"] == {"sub/notes.json": 8, "x.npy": 528}
    run.step("s", {"k": 1}, _writer(calls))
    assert calls == ["s"]  # up to date
    damages = {
        "missing": (lambda f: (f / "x.npy").unlink(), "its output {f}/x.npy is missing"),
        "resized": (lambda f: (f / "sub" / "notes.json").write_text("{}"),
                    "its output {f}/sub/notes.json has 2 bytes, but the step wrote 8"),
        "header": (lambda f: (f / "x.npy").write_bytes(b"garbage!" + (f / "x.npy").read_bytes()[8:]),
                   "its output {f}/x.npy is not a readable .npy file"),
    }
    for damage, message in damages.values():
        damage(tmp_path / "s")
        with caplog.at_level(logging.WARNING, logger="mint.pipeline.runner"):
            info = run.step("s", {"k": 1}, _writer(calls))
        assert info.ran and f"step s              redone: {message.format(f=tmp_path / 's')}" in caplog.text
        caplog.clear()
    assert calls == ["s"] * 4
    assert np.load(tmp_path / "s" / "x.npy").shape == (100,)


def test_a_record_without_file_list_is_trusted(tmp_path):
    """Records written before outputs were listed: the step stays up to date, as it was."""
    run, calls = Run(tmp_path), []
    run.step("s", {"k": 1}, _writer(calls))
    path = tmp_path / "steps" / "s.json"
    record = json.loads(path.read_text())
    del record["files"]
    path.write_text(json.dumps(record))
    (tmp_path / "s" / "x.npy").unlink()
    assert not run.step("s", {"k": 1}, _writer(calls)).ran


@pytest.fixture()
def run_config(tmp_path, tiny_model_dir):
    def write(n_records, **sections):
        records = make_alpaca_records(max(n_records, 1))[:n_records]
        train = tmp_path / "train.jsonl"
        train.write_text("".join(json.dumps(r) + "\n" for r in records))
        cfg = {"output_dir": str(tmp_path / "run"), "threads": 1,
               "data": {"train": str(train), "max_length": 64},
               "model": {"name": str(tiny_model_dir), "device": "cpu"},
               "warmup": {"sample_ratio": 0.25, "epochs": 1, "lr": 1e-3}, "grads": {"proj_dim": 16},
               "selection": {"ratios": [0.25]}, "train": {"epochs": 1, "lr": 1e-3, "random_baseline": False},
               **sections}
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path
    return write


@pytest.mark.parametrize("n, ratios, message", [
    (1, [0.25], r"train.jsonl holds 1 record; selection needs at least 2 \(config key data.train\); add records"),
    (10, [0.02, 0.5], r"config key selection.ratios: ratio 0.02 of 10 records gives a coreset of 0.20 examples, "
                      r"which rounds to 0; use a ratio of at least 0.1 or more data"),
])
def test_data_set_sizes_are_checked_before_the_warmup(run_config, tmp_path, n, ratios, message):
    from mint.pipeline import run_pipeline

    cfg = load_config(run_config(n, selection={"ratios": ratios}))
    with pytest.raises(MintError, match=message):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "warmup").exists()


@pytest.mark.slow
def test_damaged_features_are_recomputed_not_up_to_date(run_config, tmp_path, capsys, caplog):
    from mint.cli import main
    from mint.pipeline.steps import grads_call

    path = run_config(24)
    run_dir = tmp_path / "run"
    assert main(["run", "--config", str(path)]) == 0
    (log,) = (run_dir / "logs").glob("run-*.log")
    report = (run_dir / "report.md").read_text()
    assert f"- log of this invocation: [logs/{log.name}](logs/{log.name})" in report
    assert "step grads" in log.read_text() and "step train_coreset" in log.read_text()
    features = {p.name: p.read_bytes() for p in (run_dir / "grads" / "features").glob("*.npy")}
    victim = run_dir / "grads" / "features" / "pt_16_normalized.npy"
    size = victim.stat().st_size

    # `mint grads` (here its library call) on the damaged store: computed again, same bytes
    victim.write_bytes(victim.read_bytes()[:200])
    cfg = load_config(path)
    with caplog.at_level(logging.WARNING, logger="mint.model.features"):
        grads_call(cfg, cfg.data.train, run_dir / "warmup", run_dir / "grads", progress=False)
    assert f"{victim} is truncated" in caplog.text and "computing the features again" in caplog.text
    assert {p.name: p.read_bytes() for p in (run_dir / "grads" / "features").glob("*.npy")} == features

    # `mint run` with a truncated feature file and a deleted coreset: both steps redone, the rest kept
    victim.write_bytes(victim.read_bytes()[:200])
    (run_dir / "select" / "coreset_0.25.npz").unlink()
    capsys.readouterr()
    assert main(["run", "--config", str(path)]) == 0
    steps = json.loads((run_dir / "summary.json").read_text())["steps"]
    assert {name for name, s in steps.items() if s["ran"]} == {"grads", "select"}
    logs = "".join(p.read_text() for p in (run_dir / "logs").glob("run-*.log"))
    assert f"step grads          redone: its output {victim} has 200 bytes, but the step wrote {size}" in logs
    assert f"step select         redone: its output {run_dir / 'select' / 'coreset_0.25.npz'} is missing" in logs
    assert {p.name: p.read_bytes() for p in (run_dir / "grads" / "features").glob("*.npy")} == features


def test_a_coreset_without_weights_is_not_trained_as_weighted(run_config, tmp_path):
    """The train step refuses it (train.weighting loss would silently train unweighted)."""
    from mint._io import atomic_write_json
    from mint.pipeline.steps import Context, train

    cfg = load_config(run_config(24))
    select = tmp_path / "run" / "select"
    select.mkdir(parents=True)
    np.savez(select / "coreset_0.25.npz", indices=np.arange(6), n=np.int64(24))
    atomic_write_json(select / "summary.json", {"subsets": [{"ratio": 0.25, "file": "coreset_0.25.npz"}]})
    ctx = Context(cfg, run=None, train_path=cfg.data.train, n_records=24, select_dir=select)
    with pytest.raises(MintError, match=r"coreset of ratio 0.25 in .*select has no 'weights' array, so "
                                        r"train.weighting loss has nothing to apply; run the select step again"):
        train(ctx)  # before any step runs (run=None would fail there)
