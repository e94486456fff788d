"""Every subcommand is there and its --help works; `mint` alone prints help; `mint --help` stays
light (no torch import); subcommand options that are config keys carry the config's spelling,
default, choices and help."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from mint.cli import COMMANDS, build_parser, main


def _available():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


EVERY_COMMAND = ["eval", "export", "grads", "inspect", "run", "select", "train", "warmup"]


def test_every_command_present():
    assert _available() == EVERY_COMMAND
    assert sorted(COMMANDS) == EVERY_COMMAND


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch):
    import mint.cli

    monkeypatch.setitem(mint.cli.COMMANDS, "broken", "no_such_module")
    with pytest.raises(ModuleNotFoundError, match="mint.commands.no_such_module"):
        build_parser()


def test_mint_alone_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mint") and all(name in out for name in EVERY_COMMAND)


@pytest.mark.parametrize("name", EVERY_COMMAND)
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mint {name}")


def test_run_help_lists_every_config_key(capsys):
    from mint.pipeline.config import iter_fields

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for key, *_ in iter_fields():
        assert f"--{key} " in out


def test_top_level_help_does_not_import_torch():
    code = "import sys; from mint.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_unknown_run_key_is_a_clear_error(capsys):
    assert main(["run", "--selection.ratio", "0.1"]) == 2
    assert "did you mean 'selection.ratios'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--data", "x.jsonl", "--bogus", "1"])  # other commands still reject extras


def _options(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {s: a for a in sub.choices[name]._actions for s in a.option_strings}


@pytest.mark.parametrize("name", ["inspect", "warmup", "grads", "select", "train", "eval", "export"])
def test_subcommand_options_follow_the_config(name):
    """Every dotted option is a config key, with the config's choices, and leaves the config default
    in place when it is not given."""
    from mint.pipeline.config import choice_lists, iter_fields

    keys = {key for key, *_ in iter_fields()}
    choices = choice_lists()
    options = _options(name)
    dotted = [s for s in options if "." in s and not s.startswith("--no-")]  # --no-X: a boolean's off switch
    assert dotted, f"mint {name} declares no config-key options"
    for spelling in dotted:
        key = spelling[2:]
        assert key in keys, f"mint {name} {spelling} is not a config key"
        action = options[spelling]
        if key in choices and action.dest == key:
            assert tuple(action.choices) == choices[key], spelling
        if action.dest == key and not action.required:
            assert action.default is argparse.SUPPRESS  # the config default applies


@pytest.mark.parametrize("name,old,key", [
    ("warmup", "--lora_r", "lora.r"), ("warmup", "--model", "model.name"), ("warmup", "--epochs", "warmup.epochs"),
    ("train", "--epochs", "train.epochs"), ("train", "--weighting", "train.weighting"),
    ("grads", "--grad_type", "grads.grad_type"), ("grads", "--data", "data.train"),
    ("select", "--ratios", "selection.ratios"), ("select", "--alpha", "selection.alpha"),
    ("eval", "--data", "data.eval"), ("eval", "--generate", "eval.generate"), ("export", "--data", "data.train"),
])
def test_old_spellings_stay_as_aliases(name, old, key):
    options = _options(name)
    assert options[old] is options[f"--{key}"]


def test_subcommand_defaults_are_the_config_defaults():
    """`mint train` with no training options trains with the config's train.* values."""
    from mint.commands.options import config_from_args
    from mint.pipeline.config import RunConfig

    args = build_parser().parse_args(["train", "--data", "d.jsonl", "--output_dir", "o"])
    cfg = config_from_args(args)
    assert cfg.train == RunConfig().train and cfg.lora == RunConfig().lora and cfg.data.train == "d.jsonl"
    args = build_parser().parse_args(["select", "--features", "f", "--output_dir", "o"])
    assert config_from_args(args).selection == RunConfig().selection


def test_bad_option_value_names_the_key(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", "d.jsonl", "--output_dir", "o", "--train.epochs", "many"])
    assert "config key train.epochs: expected float" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["select", "--features", "f", "--output_dir", "o", "--method", "best"])
    assert "invalid choice: 'best'" in capsys.readouterr().err
