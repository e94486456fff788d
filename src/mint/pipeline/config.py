"""The configuration of a `mint run`: dataclasses with help text, a YAML file and dotted overrides.

Layers, later ones winning: the defaults below; the demo preset (`DEMO_PRESET`, only when no
config file and no `data.train` are given, i.e. `mint run` alone); the YAML file; the dotted
command-line overrides (`--selection.ratios 0.05 0.1`). Unknown keys, wrong types and values
out of range are `MintError`s naming the key and the fix. `RunConfig.to_dict()` is what a run
saves as `config.yaml`, so `mint run --config RUN/config.yaml` reproduces it.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mint import choices
from mint.errors import MintError
from mint.model.modeling import LoraSettings  # light: torch loads inside its functions only

__all__ = [
    "DataConfig", "ModelConfig", "LoraSettings", "WarmupConfig", "GradsConfig", "SelectionConfig",
    "TrainConfig", "EvalConfig", "RunConfig", "DEMO_PRESET", "TRAINER_KEYS", "load_config", "parse_overrides",
    "iter_fields", "save_config",
]


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataConfig:
    train: str | None = _f(None, "instruction data to select from: JSONL/JSON (.gz ok), parquet, CSV, Arrow, a datasets "
                                 "folder or a hub id, in the Alpaca, chat, ShareGPT or prompt/completion schema; "
                                 "empty = the built-in demo data")
    eval: str | None = _f(None, "held-out file for evaluation, same schema; empty = the demo's held-out split "
                                "with demo data, else no evaluation")
    schema: str = _f("auto", "record schema: auto (detected from the first record) | alpaca | chat | sharegpt | "
                             "prompt_completion", choices=("auto", *choices.SCHEMAS))
    assistant_turns: str = _f("all", "which assistant turns of a conversation are learned: all (every one, as "
                                     "LESS, LLaMA-Factory and axolotl do) | last", choices=choices.ASSISTANT_TURNS)
    template: str = _f("auto", "prompt rendering: auto (chat template when the tokenizer has one) | chat | plain",
                       choices=choices.TEMPLATES)
    max_length: int = _f(512, "tokens per example; prompts are cut from the left first, responses kept")
    long_prompts: str = _f("error", "a prompt that alone fills max_length: error (bad input) | truncate "
                                    "(cut it from the left like other prompts)", choices=choices.LONG_PROMPTS)
    demo_examples: int = _f(200, "size of the built-in demo training split (only when `train` is empty)")
    demo_eval_examples: int = _f(60, "size of the built-in demo held-out split (only when `train` is empty)")


@dataclass
class ModelConfig:
    name: str = _f("smollm2-135m-instruct", "base model: a local folder, a hub id (needs network), or the "
                                            "offline alias smollm2-135m-instruct")
    device: str = _f("auto", "auto (CUDA when present, else CPU) | cpu | cuda | cuda:N")
    dtype: str = _f("auto", "auto (float32 on CPU, bfloat16 on a GPU that supports it, else float32) | float32 | bfloat16 | float16",
                    choices=choices.DTYPES)
    proxy: str | None = _f(None, "a smaller model for the warm-up and the gradient features (selection), while "
                                 "training and evaluation use `name`; empty = `name` does both")

    def selector(self) -> str:
        """The model that selects: the proxy when there is one."""
        return self.proxy or self.name


# The Trainer settings of the warm-up and of the training, named as `transformers.TrainingArguments`
# names them: (default, help, extra field metadata).
_TRAINER = {
    "lr_scheduler_type": ("linear", "learning-rate schedule after the warm-up steps (a transformers scheduler)",
                          {"choices": choices.LR_SCHEDULER_TYPES}),
    "warmup_ratio": (0.03, "fraction of the optimizer steps (the floor) over which the learning rate rises", {}),
    "weight_decay": (0.0, "AdamW weight decay", {}),
    "max_grad_norm": (1.0, "gradient clipping norm; empty = no clipping", {}),
    "gradient_checkpointing": (False, "recompute activations in the backward pass (less memory, ~30% more time)", {}),
    "bf16": (False, "bfloat16 mixed precision (autocast; the LoRA weights stay float32)", {}),
    "fp16": (False, "float16 mixed precision with loss scaling (GPUs)", {}),
    "report_to": (["none"], "where the Trainer logs: none | tensorboard (into the step's tensorboard/ folder) | "
                            "wandb | mlflow | ... (names of transformers' integrations)", {}),
    "resume_from_checkpoint": (True, "continue an interrupted run with the same settings from its latest "
                                     "checkpoint; false = start over", {}),
}


def _t(name: str) -> Any:
    default, help_text, extra = _TRAINER[name]
    return _f(default, help_text, **extra)


TRAINER_KEYS = tuple(_TRAINER)  # the keys of both the warmup and the train section


@dataclass
class WarmupConfig:
    sample_ratio: float = _f(0.05, "fraction of the data, drawn at random, to warm the adapter up on (paper: 5%)")
    epochs: float = _f(4.0, "warm-up epochs (LESS: 4)")
    lr: float = _f(2e-5, "warm-up AdamW learning rate (LESS: 2e-5)")
    batch_size: int = _f(8, "examples per forward pass")
    grad_accum: int = _f(1, "forward passes per optimizer step")
    lr_scheduler_type: str = _t("lr_scheduler_type")
    warmup_ratio: float = _t("warmup_ratio")
    weight_decay: float = _t("weight_decay")
    max_grad_norm: float | None = _t("max_grad_norm")
    gradient_checkpointing: bool = _t("gradient_checkpointing")
    bf16: bool = _t("bf16")
    fp16: bool = _t("fp16")
    report_to: list[str] = _t("report_to")
    resume_from_checkpoint: bool = _t("resume_from_checkpoint")


@dataclass
class GradsConfig:
    proj_dim: int | None = _f(8192, "random projection dimension of the gradient features (paper: 8192); "
                                    "empty = raw gradients")
    grad_type: str = _f("adam", "adam (preconditioned with the warm-up AdamW state, as in LESS/MINT) | sgd | sign",
                        choices=choices.GRAD_TYPES)
    batch_size: int = _f(8, "examples per batched per-example-gradient pass")
    storage_dtype: str = _f("float32", "float32 | float16: the normalised features the selection reads (float16 "
                                       "halves their disk and I/O)", choices=choices.STORAGE_DTYPES)
    projection: str = _f("rademacher", "random projection: rademacher | gaussian (dense seeded tiles) | sjlt (sparse "
                                        "JL: sjlt_s signed entries per coordinate, the fast choice at 7-8B scale) | "
                                        "trak (trak's CUDA kernel, pip install 'mint-coreset[trak]'; else rademacher)",
                         choices=choices.PROJECTIONS)
    sjlt_s: int = _f(2, "non-zeros per gradient coordinate of the sjlt projection (2: distortion of the dense "
                        "projection on real features, about 0.6 s per 109M-entry row on one CPU thread)")
    shard_size: int = _f(64, "examples per resumable shard of the feature store (a constant of the store)")
    cache_mb: int = _f(1024, "MiB of projection tiles (dense) or hashes (sjlt) kept on the device; beyond it they "
                             "are regenerated for every projection call")
    buffer_mb: int = _f(1024, "MiB of gradient rows waiting for the projection: the whole shard in one call when it "
                              "fits (fewest calls), else as many micro-batches as fit, at least one")


@dataclass
class SelectionConfig:
    ratios: list[float] = _f([0.05], "coreset sizes as fractions of the data, each in (0, 1]; nested prefixes "
                                     "of one greedy order")
    method: str = _f("mint", "mint | craig (SFT distances only) | pt | ifl | random", choices=choices.METHODS)
    alpha: float | None = _f(None, "MINT trade-off a in (0, 1) for D = d_PT/a + d_IFL/(1-a); empty = automatic")
    alpha_method: str = _f("plateau", "automatic alpha: plateau (MINT reference) | plateau_scaled | golden (BRIEF)",
                           choices=choices.ALPHA_METHODS)
    coef: list[float] | None = _f(None, "explicit distance coefficients [c_sft, c_pt, c_ifl] instead of alpha")
    preheat_ratio: float = _f(0.3, "fraction of the data pre-sampled for the automatic alpha search")
    preheat_max: int = _f(10_000, "at most this many rows in that pre-sample (its matrices grow as the square)")
    strategy: str = _f("auto", "exact (one N x N matrix) | partitioned (random parts of at most partition_size "
                               "rows, selected in parallel and merged) | auto (exact while it fits the memory)",
                       choices=choices.SELECTION_STRATEGIES)
    partition_size: int = _f(20_000, "rows per part of the partitioned selection (a part's matrix: 1.6 GB at "
                                     "20,000)")
    partition: str = _f("random", "how the partitioned selection splits the rows: random (seeded) | kmeans "
                                  "(k-means on the features, clusters cut to partition_size)",
                        choices=choices.SELECTION_PARTITIONS)
    second_round: bool = _f(False, "partitioned selection: a second greedy round (GreeDi) over the parts' picks "
                                   "against every row, with global weights and errors (one N x 2k matrix)")


@dataclass
class TrainConfig:
    ratio: float | None = _f(None, "which selection ratio to train on (must be one of selection.ratios); "
                                   "empty = the largest")
    weighting: str = _f("loss", "how coreset weights enter training: loss (w_i/mean(w) times each example's "
                                "loss) | sampling (draw examples with probability proportional to w) | none",
                          choices=choices.WEIGHTINGS)
    epochs: float = _f(3.0, "training epochs over the subset")
    lr: float = _f(2e-5, "AdamW learning rate")
    batch_size: int = _f(8, "examples per forward pass")
    grad_accum: int = _f(1, "forward passes per optimizer step")
    lr_scheduler_type: str = _t("lr_scheduler_type")
    warmup_ratio: float = _t("warmup_ratio")
    weight_decay: float = _t("weight_decay")
    max_grad_norm: float | None = _t("max_grad_norm")
    gradient_checkpointing: bool = _t("gradient_checkpointing")
    bf16: bool = _t("bf16")
    fp16: bool = _t("fp16")
    report_to: list[str] = _t("report_to")
    resume_from_checkpoint: bool = _t("resume_from_checkpoint")
    random_baseline: bool = _f(True, "also train on a random subset of the same size (uniform weights)")
    full_baseline: bool = _f(False, "also train on the full data (the reference a coreset tries to match)")


@dataclass
class EvalConfig:
    batch_size: int = _f(8, "examples per forward pass")
    generate: bool = _f(False, "also greedy-generate answers and score exact match and ROUGE-L")
    max_new_tokens: int = _f(32, "generation length; examples whose reference is longer are not generated")
    generate_limit: int | None = _f(None, "generate for at most this many held-out examples; empty = all")
    base: bool = _f(True, "also evaluate the base model without an adapter")


@dataclass
class RunConfig:
    output_dir: str = _f("runs/mint", "run folder: one subfolder per step, config.yaml and report.md")
    seed: int = _f(0, "seed for sampling, projection, selection and training")
    threads: int | None = _f(None, "torch CPU threads; empty = torch's default")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)  # the model package's own class
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    grads: GradsConfig = field(default_factory=GradsConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def train_ratio(self) -> float:
        return self.train.ratio if self.train.ratio is not None else max(self.selection.ratios)

    def validate(self) -> "RunConfig":
        from mint.pipeline.config_checks import validate

        validate(self)
        return self


# The offline demo (`mint run` with no arguments): small enough for a 2-core CPU in a few minutes,
# strong enough that the coreset-trained model clearly beats the base model on the held-out split.
DEMO_PRESET: dict[str, Any] = {
    "output_dir": "runs/demo",
    "threads": 2,
    "data.max_length": 128,
    "lora.r": 8,
    "lora.alpha": 16.0,
    "warmup.sample_ratio": 0.1,
    "warmup.epochs": 2.0,
    "warmup.lr": 1e-3,
    "grads.proj_dim": 1024,
    "selection.ratios": [0.1],
    "train.epochs": 3.0,
    "train.lr": 1e-3,
    "eval.generate": True,
    "eval.max_new_tokens": 24,
    "eval.generate_limit": 40,
}


def iter_fields(cls: type = RunConfig, prefix: str = ""):
    """(dotted key, type, default, help) for every leaf setting, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield f"{prefix}{f.name}", tp, default, f.metadata.get("help", "")


def choice_lists() -> dict[str, tuple[str, ...]]:
    """dotted key -> allowed values, for every key that takes one of a few names."""
    return {key: choices for key, choices in _choices_by_key().items() if choices}


def _choices_by_key(cls: type = None, prefix: str = "") -> dict[str, tuple[str, ...] | None]:
    cls = cls or RunConfig
    out: dict[str, tuple[str, ...] | None] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_choices_by_key(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f.metadata.get("choices")
    return out


def get_key(cfg: "RunConfig", key: str) -> Any:
    """The value of a dotted key (`selection.ratios`)."""
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("NoneType", "None").replace("<class '", "").replace("'>", "")


def coerce_value(key: str, tp: Any, value: Any) -> Any:
    """`value` checked against the annotation `tp` (ints accepted for floats, a scalar for a list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return coerce_value(key, inner[0], value)
    if origin is list:
        (item,) = typing.get_args(tp)
        values = value if isinstance(value, (list, tuple)) else [value]
        return [coerce_value(key, item, v) for v in values]
    bad = MintError(f"config key {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if tp in (int, float):
        if isinstance(value, bool):
            raise bad
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise bad  # 2.5 is no int; 2.0 is
        if isinstance(value, (int, float, str)):
            try:
                return tp(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad  # pragma: no cover - every annotation above is handled


def _unknown(key: str, known: list[str], where: str, value: Any = None) -> MintError:
    keys = [k for k in known if k.startswith(key + ".")]
    if keys:  # `data: file.jsonl` or `data:` alone: a section given as a scalar or null
        given = "null (empty)" if value is None else repr(value)
        return MintError(f"{where}: `{key}` is a section ({', '.join(keys[:3])}, ...) but it is given as {given}; "
                         f"write its keys under it (`{key}:` then `  {keys[0][len(key) + 1:]}: ...`) or --{keys[0]}")
    # a misspelling within the right section ("selection.ratio"), then a bare or misplaced leaf
    # name ("ratios", "train.ratios"), then any close spelling
    section = key.rsplit(".", 1)[0] + "." if "." in key else None
    same = [k for k in known if section and k.startswith(section)]
    hint = difflib.get_close_matches(key, same, n=1, cutoff=0.6)
    hint = hint or [k for k in known if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    hint = hint or difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    fix = f"did you mean {hint[0]!r}?" if hint else "see `mint run --help` for the list of keys"
    return MintError(f"unknown config key {key!r} in {where}; {fix}")


def _flatten(tree: Any, where: str, prefix: str = "") -> dict[str, Any]:
    if not tree and not prefix:  # an empty file is a mistake, never a request for the demo
        raise MintError(f"{where} is empty; give at least `data:` with `train: FILE` (keys: `mint run --help`), or "
                        "run `mint run` without --config for the offline demo")
    if not isinstance(tree, dict):
        raise MintError(f"{where}: expected a mapping of config sections, got {type(tree).__name__}")
    sections = {k.split(".")[0] for k, *_ in iter_fields() if "." in k}
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix and k in sections:
            flat.update(_flatten(v, where, f"{key}."))
        else:
            flat[key] = v
    return flat


def _apply(cfg: RunConfig, flat: dict[str, Any], where: str) -> None:
    types_by_key = {k: tp for k, tp, _, _ in iter_fields()}
    for key, value in flat.items():
        if key not in types_by_key:
            raise _unknown(key, list(types_by_key), where, value)
        obj = cfg
        *path, leaf = key.split(".")
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, leaf, coerce_value(key, types_by_key[key], value))


def parse_token(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """`["--selection.ratios", "0.05", "0.1", "--seed=3"]` -> {"selection.ratios": [0.05, 0.1], "seed": 3}.

    Values are read as YAML scalars (`null`, `true`, numbers); several values make a list."""
    out: dict[str, Any] = {}
    key: str | None = None
    for tok in tokens:
        if tok.startswith("--") and len(tok) > 2 and not _is_number(tok):
            name, eq, val = tok[2:].partition("=")
            key = name.replace("-", "_")
            out[key] = [parse_token(val)] if eq else []
        elif key is None:
            raise MintError(f"unexpected argument {tok!r}: config overrides look like --section.key VALUE")
        else:
            out[key].append(parse_token(tok))
    for k, v in out.items():
        if not v:
            raise MintError(f"config override --{k} needs a value (use `null` for empty)")
        out[k] = v[0] if len(v) == 1 else v
    return out


def _is_number(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def load_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                *, demo: bool | None = None) -> RunConfig:
    """The resolved, validated configuration.

    `demo=None` applies `DEMO_PRESET` when neither a file nor `data.train` is given."""
    import yaml

    file_flat: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            tree = yaml.safe_load(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {p}") from None
        except yaml.YAMLError as e:
            raise MintError(f"{p}: not valid YAML ({e})") from e
        file_flat = _flatten(tree, str(p))
    overrides = dict(overrides or {})
    if demo is None:
        demo = path is None and overrides.get("data.train") is None
    cfg = RunConfig()
    if demo:
        _apply(cfg, DEMO_PRESET, "the demo preset")
    _apply(cfg, file_flat, str(path))
    _apply(cfg, overrides, "the command-line overrides")
    return cfg.validate()


def save_config(cfg: RunConfig, path: str | os.PathLike) -> Path:
    import yaml

    from mint._io import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
