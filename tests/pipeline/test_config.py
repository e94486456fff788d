"""Run configuration: layers, dotted overrides, and clear errors for bad keys and values."""
from __future__ import annotations

import pytest
import yaml

from mint.pipeline.config import DEMO_PRESET, RunConfig, iter_fields, load_config, parse_overrides, save_config
from mint.errors import MintError
from conftest import REPO


def test_layers_file_then_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"seed": 3, "data": {"train": "x.jsonl"},
                                    "selection": {"ratios": [0.05, 0.1], "alpha": 0.9}}))
    cfg = load_config(path, parse_overrides(["--selection.ratios", "0.05", "0.2", "--train.ratio=0.2"]))
    assert cfg.seed == 3 and cfg.data.train == "x.jsonl" and cfg.selection.alpha == 0.9
    assert cfg.selection.ratios == [0.05, 0.2] and cfg.train_ratio() == 0.2
    assert cfg.grads.proj_dim == RunConfig().grads.proj_dim  # no demo preset with a file


def test_demo_preset_only_without_file_and_data():
    assert load_config().grads.proj_dim == DEMO_PRESET["grads.proj_dim"]
    assert load_config(overrides={"data.train": "mine.jsonl"}).grads.proj_dim == 8192


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(overrides={"selection.coef": [0, 1, 2], "lora.target_modules": "q_proj"})
    assert cfg.lora.target_modules == ["q_proj"] and cfg.selection.coef == [0.0, 1.0, 2.0]
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_parse_overrides_types():
    got = parse_overrides(["--seed", "7", "--selection.alpha", "null", "--eval.generate", "true",
                           "--selection.ratios", "0.05", "0.1", "--data.train", "a b.jsonl"])
    assert got == {"seed": 7, "selection.alpha": None, "eval.generate": True,
                   "selection.ratios": [0.05, 0.1], "data.train": "a b.jsonl"}
    with pytest.raises(MintError, match="needs a value"):
        parse_overrides(["--seed"])
    with pytest.raises(MintError, match="unexpected argument"):
        parse_overrides(["7"])


@pytest.mark.parametrize("overrides, match", [
    ({"selection.ratio": 0.1}, "unknown config key 'selection.ratio'.*did you mean 'selection.ratios'"),
    ({"ratios": 0.1}, "did you mean 'selection.ratios'"),
    ({"train.epochs": "many"}, "train.epochs: expected float"),
    ({"seed": 1.5}, "seed: expected int"),
    ({"eval.generate": 3}, "eval.generate: expected bool"),
    ({"selection.ratios": [0.1, 1.5]}, "ratio 1.5 is outside"),
    ({"selection.ratios": [0.0]}, "ratio 0.0 is outside"),
    ({"selection.ratios": [0.121, 0.124]}, "round to the same two decimals"),
    ({"train.ratio": 0.3}, "train.ratio: 0.3 is not among selection.ratios"),
    ({"selection.alpha": 1.0}, "selection.alpha"),
    ({"selection.method": "greedy"}, "not one of mint, craig"),
    ({"selection.coef": [1, 1]}, "needs 3 numbers"),
])
def test_bad_values_are_clear_errors(overrides, match):
    with pytest.raises(MintError, match=match):
        load_config(overrides=overrides)


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("warmup:\n  epoch: 2\n")
    with pytest.raises(MintError, match=r"'warmup.epoch' in .*run.yaml; did you mean 'warmup.epochs'"):
        load_config(path)
    path.write_text("selection: [1, 2]\n")  # a section given as a value: said so, not "unknown key" (issue 13)
    with pytest.raises(MintError, match=r"run.yaml: `selection` is a section .* given as \[1, 2\]; write its keys"):
        load_config(path)


def test_every_key_has_help():
    assert all(help_text for _, _, _, help_text in iter_fields())


def test_readme_documents_every_key():

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [key for key, *_ in iter_fields() if f"`{key}`" not in readme]
    assert not missing, f"README.md does not explain config keys {missing}"
