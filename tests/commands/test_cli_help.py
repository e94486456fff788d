"""Every subcommand's --help works, and `mint --help` stays light (no torch import)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mint.cli import COMMANDS, build_parser, main


def _available():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return sorted(sub.choices)


def test_all_pipeline_commands_present():
    # run/eval/export are always there; the others as their modules land
    assert {"run", "eval", "export"} <= set(_available()) <= set(COMMANDS)


@pytest.mark.parametrize("name", _available())
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
