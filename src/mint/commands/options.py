"""Subcommand options built from the config dataclasses (`mint.pipeline.config`), so a flag has
the name, type, default, choices and help of its config key, everywhere.

`add_config_options(parser, [("warmup.epochs", "--epochs"), "seed", ...])` adds `--warmup.epochs`
(with the old spelling `--epochs` as an alias). Options left out on the command line keep the
config default; `config_from_args(args)` returns the validated `RunConfig` with the given ones
applied, checked by the same rules as a config file.
"""
from __future__ import annotations

import argparse
import typing
from typing import Any, Iterable

__all__ = ["add_config_options", "config_from_args", "ConfigKey"]

ConfigKey = "str | tuple[str, ...]"  # "section.key" or ("section.key", "--alias", ...)
_GIVEN = "_config_keys"  # the namespace attribute listing the config keys a parser declares


def _fields() -> dict[str, tuple[Any, Any, str, tuple[str, ...] | None]]:
    from mint.pipeline.config import choice_lists, iter_fields

    choices = choice_lists()
    return {key: (tp, default, help_text, choices.get(key)) for key, tp, default, help_text in iter_fields()}


def _shown(default: Any) -> str:
    if default is None:
        return "empty"
    if isinstance(default, list):
        return " ".join(map(str, default))
    return str(default)


def _item_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is a list) of an annotation such as `int | None` or `list[float] | None`."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is not list else [tp]
    inner = args[0] if args else tp
    if typing.get_origin(inner) is list:
        return typing.get_args(inner)[0], True
    return inner, False


def _converter(key: str, target: Any):
    """One command-line value read as the config file reads it (YAML scalar, then the key's type)."""
    from mint.errors import MintError
    from mint.pipeline.config import coerce_value, parse_token

    def convert(text: str):
        try:
            return coerce_value(key, target, parse_token(text))
        except MintError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def add_config_options(parser: argparse.ArgumentParser, keys: Iterable, *, required: Iterable[str] = (),
                       overrides: dict[str, dict] | None = None) -> None:
    """Add one option per config key (see the module docstring). `required`: keys that must be
    given; `overrides`: extra `add_argument` keywords per key (e.g. another help text)."""
    fields = _fields()
    required = set(required)
    declared = list(parser.get_default(_GIVEN) or [])
    for entry in keys:
        key, *aliases = (entry,) if isinstance(entry, str) else entry
        tp, default, help_text, choices = fields[key]
        item, is_list = _item_type(tp)
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "metavar": key.rsplit(".", 1)[-1].upper()}
        if item is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
            del kwargs["metavar"]
        else:
            kwargs["type"] = _converter(key, item if is_list else tp)
            if is_list:
                kwargs["nargs"] = "+"
            if choices:
                kwargs["choices"] = choices
                del kwargs["metavar"]
        kwargs["required"] = key in required
        suffix = "" if key in required else f" (default: {_shown(default)})"
        kwargs["help"] = help_text + suffix
        kwargs.update((overrides or {}).get(key, {}))
        kwargs["help"] = kwargs["help"].replace("%", "%%")  # argparse formats help with %
        parser.add_argument(f"--{key}", *aliases, **kwargs)
        declared.append(key)
    parser.set_defaults(**{_GIVEN: declared})


def config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    """The validated RunConfig: defaults, then the config options given on the command line
    (then `extra`, dotted keys set by the command itself)."""
    from mint.pipeline.config import load_config

    given = {key: getattr(args, key) for key in getattr(args, _GIVEN, []) if hasattr(args, key)}
    given.update(extra or {})
    return load_config(None, given, demo=False)


# The help of `data.train` for the subcommands, where it is required (the config's text speaks of the demo).
DATA_HELP = {"data.train": {"help": "instruction data: JSON, JSONL (.gz ok), parquet, CSV, Arrow, a datasets "
                                    "save_to_disk folder or a hub dataset id, in the Alpaca, chat (`messages`), "
                                    "ShareGPT or prompt/completion schema"}}

# Key groups shared by several subcommands, with the spellings of earlier versions as aliases.
MODEL_KEYS = (("model.name", "--model"), ("model.device", "--device"), ("model.dtype", "--dtype"))
RENDER_KEYS = (("data.max_length", "--max_length"), ("data.long_prompts", "--long_prompts"),
               ("data.template", "--template"), ("data.schema", "--schema"),
               ("data.assistant_turns", "--assistant_turns"))
LORA_KEYS = (("lora.r", "--lora_r"), ("lora.alpha", "--lora_alpha"), ("lora.dropout", "--lora_dropout"),
             ("lora.target_modules", "--target_modules"))


def trainer_keys(section: str) -> list[str]:
    """The Trainer settings of a section (`warmup` or `train`): `--train.bf16`, `--train.report_to`, ..."""
    from mint.pipeline.config import TRAINER_KEYS

    return [f"{section}.{key}" for key in TRAINER_KEYS]


def apply_threads(cfg) -> None:
    """`threads` (torch CPU threads), applied here at the command-line edge, never inside the library."""
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)


def add_output_options(parser: argparse.ArgumentParser, what: str) -> None:
    from mint.commands.session import add_wait_option

    parser.add_argument("--output_dir", required=True, help=what)
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder holding another run")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_wait_option(parser)
