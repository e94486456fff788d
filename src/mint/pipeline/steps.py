"""The steps of `mint run`, one module-level function each, and the table that orders them.

Two layers:

- *step calls* (`warmup_call`, `grads_call`, `select_call`, `train_call`, `eval_call`): the one
  place where configuration keys become the keyword options of a library function. `mint run`
  and the subcommands (`mint warmup`, `mint grads`, ...) both go through them, so a key means
  the same thing everywhere.
- *pipeline steps* (`data`, `warmup`, `grads`, ...; listed in `STEPS`): each computes the key of
  its work (the sha256 of its settings, its inputs' hashes and the keys of the steps it reads)
  and hands it to `Run.step`, which skips work whose finished record carries the same key
  (see `mint.pipeline.runner`).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mint._io import read_json, sha256_bytes
from mint.errors import MintError
from mint.records import source_format, source_sha256
from mint.pipeline.config import TRAINER_KEYS, GradsConfig, RunConfig

__all__ = ["STEPS", "DEMO_DATA_VERSION", "render_options", "render_key", "warmup_call", "grads_call",
           "select_call", "train_call", "eval_call"]

log = logging.getLogger(__name__)

DEMO_DATA_VERSION = 1  # bump when mint.pipeline.demo_data changes what it generates
_ADDED_GRADS_KEYS = ("projection", "sjlt_s", "shard_size", "buffer_mb")  # in the grads key only when changed


# ----------------------------------------------------------------------------- config -> library calls


def render_options(cfg: RunConfig) -> dict[str, Any]:
    """How records become token ids: the same for every step that reads data."""
    d = cfg.data
    return {"schema": d.schema, "template": d.template, "max_length": d.max_length, "long_prompts": d.long_prompts,
            "assistant_turns": d.assistant_turns}


def render_key(cfg: RunConfig, examples) -> dict[str, Any]:
    """`render_options` as part of a step's key: ``assistant_turns`` only when the data (its
    loaded `examples`) has an earlier assistant turn, where it changes the token ids (single-turn
    data keeps the step keys of earlier versions, as `mint.model.data.token_settings` keeps its
    fingerprints)."""
    options = render_options(cfg)
    if not any(ex.learned for ex in examples):
        del options["assistant_turns"]
    return options


def _examples(cfg: RunConfig, data_path: Path):
    from mint.model.data import load_examples

    return load_examples(data_path, schema=cfg.data.schema, assistant_turns=cfg.data.assistant_turns)


def trainer_options(section) -> dict[str, Any]:
    """The Trainer settings of the `warmup` or `train` section, as `train_lora` keywords."""
    return {key: getattr(section, key) for key in TRAINER_KEYS}


def trainer_key(section) -> dict[str, Any]:
    """`trainer_options` as part of a step's key: the settings that change the result, and only
    where they differ from their defaults (a run made before they existed keeps its step keys)."""
    defaults = type(section)()
    return {key: getattr(section, key) for key in TRAINER_KEYS
            if key not in ("report_to", "resume_from_checkpoint") and getattr(section, key) != getattr(defaults, key)}


def warmup_call(cfg: RunConfig, train_path: Path, folder: Path, **options: Any) -> Path:
    from mint.model.warmup import run_warmup

    w = cfg.warmup
    return run_warmup(cfg.model.selector(), train_path, folder, sample_ratio=w.sample_ratio, epochs=w.epochs, lr=w.lr,
                      batch_size=w.batch_size, grad_accum=w.grad_accum, lora=cfg.lora, seed=cfg.seed,
                      device=cfg.model.device, dtype=cfg.model.dtype, **trainer_options(w), **render_options(cfg),
                      **options)


def grads_call(cfg: RunConfig, train_path: Path, warmup_dir: Path, folder: Path, **options: Any) -> Path:
    from mint.model.features import compute_features

    g = cfg.grads
    options.setdefault("proj_dim", g.proj_dim)
    return compute_features(cfg.model.selector(), train_path, warmup_dir, folder, grad_type=g.grad_type,
                            batch_size=g.batch_size, seed=cfg.seed, device=cfg.model.device, dtype=cfg.model.dtype,
                            storage_dtype=g.storage_dtype, projection=g.projection, sjlt_s=g.sjlt_s,
                            shard_size=g.shard_size, cache_mb=g.cache_mb, buffer_mb=g.buffer_mb,
                            **render_options(cfg), **options)


def select_call(cfg: RunConfig, features_dir: Path, folder: Path, data_path: Path | None, **options: Any):
    from mint.pipeline.select_step import run_selection

    s = cfg.selection
    return run_selection(features_dir, folder, ratios=s.ratios, method=s.method, alpha=s.alpha,
                         alpha_method=s.alpha_method, coef=s.coef, preheat_ratio=s.preheat_ratio,
                         preheat_max=s.preheat_max, strategy=s.strategy, partition_size=s.partition_size,
                         partition=s.partition, second_round=s.second_round,
                         seed=cfg.seed, data=data_path, **options)


def train_call(cfg: RunConfig, train_path: Path, folder: Path, *, indices, weights, weighting: str,
               **options: Any) -> Path:
    from mint.model.train import train_lora

    t = cfg.train
    return train_lora(cfg.model.name, train_path, folder, indices=indices, weights=weights, weighting=weighting,
                      epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, grad_accum=t.grad_accum,
                      lora=cfg.lora, seed=cfg.seed, device=cfg.model.device, dtype=cfg.model.dtype,
                      **trainer_options(t), **render_options(cfg), **options)


def eval_call(cfg: RunConfig, eval_path: Path, adapter: Path | None, folder: Path | None, **options: Any) -> dict:
    from mint.model.evaluate import evaluate

    e = cfg.eval
    return evaluate(cfg.model.name, eval_path, adapter=adapter, output_dir=folder, batch_size=e.batch_size,
                    generate=e.generate, max_new_tokens=e.max_new_tokens, generate_limit=e.generate_limit,
                    device=cfg.model.device, dtype=cfg.model.dtype, **render_options(cfg), **options)


# ----------------------------------------------------------------------------- the pipeline steps


@dataclass
class Context:
    """What the steps of one `mint run` share; filled in as the steps run."""

    cfg: RunConfig
    run: Any  # mint.pipeline.runner.Run: .step(name, inputs, fn), .rel(path), .abs(rel)
    train_path: Path | None = None
    eval_path: Path | None = None
    n_records: int = 0
    common: dict = field(default_factory=dict)  # inputs every model step depends on
    infos: dict = field(default_factory=dict)  # step name -> StepInfo (key, outputs) of the steps read later
    select_dir: Path | None = None
    coreset: dict = field(default_factory=dict)  # ratio, k, indices, weights of the trained coreset
    trained: dict = field(default_factory=dict)  # model label -> StepInfo of its training step
    metrics: dict = field(default_factory=dict)  # model label -> metrics.json contents
    hashes: dict = field(default_factory=dict)  # source -> its fingerprint, computed once per run

    def sha(self, source) -> str:
        """`source_sha256` of a data source, once per run (a 1M-record file takes seconds to hash)."""
        key = str(source) if source_format(source) == "hub" else str(Path(source).resolve())
        if key not in self.hashes:
            self.hashes[key] = source_sha256(source)
        return self.hashes[key]


def data(ctx: Context) -> None:
    """Write the built-in demo data into the run, or fingerprint the user's files."""
    cfg = ctx.cfg

    def do(folder: Path) -> dict:
        if cfg.data.train is None:
            from mint.pipeline.demo_data import write_demo_data

            train, held = write_demo_data(folder, cfg.data.demo_examples, cfg.data.demo_eval_examples)
            return {"train": ctx.run.rel(train), "eval": ctx.run.rel(held), "builtin": True}
        if cfg.data.eval:
            _check_eval_schema(Path(cfg.data.train), Path(cfg.data.eval))
        return {"train": _absolute(cfg.data.train), "builtin": False,
                "eval": _absolute(cfg.data.eval) if cfg.data.eval else None}

    if cfg.data.train is None:
        inputs = {"demo": DEMO_DATA_VERSION, "n_train": cfg.data.demo_examples, "n_eval": cfg.data.demo_eval_examples}
    else:
        inputs = {"train": str(cfg.data.train), "train_sha256": ctx.sha(cfg.data.train),
                  "eval": str(cfg.data.eval), "eval_sha256": ctx.sha(cfg.data.eval) if cfg.data.eval else None}
    info = ctx.run.step("data", inputs, do)
    where = ctx.run.abs if info.outputs["builtin"] else Path
    ctx.train_path = where(info.outputs["train"])
    ctx.eval_path = where(info.outputs["eval"]) if info.outputs.get("eval") else None
    examples = _examples(cfg, ctx.train_path)  # read once: the record count and the rendering key
    ctx.n_records = len(examples)
    _check_sizes(cfg, ctx.n_records, ctx.train_path)
    # the training file's own hash, not the data step's key: a new held-out file redoes only the evaluations
    ctx.common = {"model": cfg.model.name, "train_sha256": ctx.sha(ctx.train_path),
                  "render": render_key(cfg, examples), "seed": cfg.seed}


def _absolute(source: str) -> str:
    """A local path made absolute; a hub dataset id as it is."""
    from mint.records import source_format

    return source if source_format(source) == "hub" else str(Path(source).resolve())


def _check_sizes(cfg: RunConfig, n: int, train_path: Path) -> None:
    """Before the warm-up: enough records to select from, and a coreset of >= 1 example per ratio
    (the selection would otherwise fail, or round a size up, after hours of work)."""
    if n < 2:
        raise MintError(f"{train_path} holds {n} record; selection needs at least 2 (config key data.train); "
                        "add records")
    for r in cfg.selection.ratios:
        if round(r * n) < 1:
            raise MintError(f"config key selection.ratios: ratio {r:g} of {n} records gives a coreset of "
                            f"{r * n:.2f} examples, which rounds to 0; use a ratio of at least {1 / n:.3g} or more data")


def _check_eval_schema(train_path: Path, eval_path: Path) -> None:
    from mint.records import detect_schema, read_records

    a, b = detect_schema(read_records(train_path)[0]), detect_schema(read_records(eval_path)[0])
    if a != b:
        raise MintError(f"the evaluation file {eval_path} is in the {b} schema but the training data {train_path} "
                        f"is {a}; convert one of them so both use the same schema")


def _world() -> dict[str, int]:
    """The number of torchrun processes, in the key of a step whose result depends on it (> 1 only)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return {"world_size": world} if world > 1 else {}


def warmup(ctx: Context) -> None:
    cfg = ctx.cfg
    warm = {k: v for k, v in asdict(cfg.warmup).items() if k not in TRAINER_KEYS}
    inputs = {**ctx.common, "lora": asdict(cfg.lora), "warmup": {**warm, **trainer_key(cfg.warmup)},
              **({"proxy": cfg.model.proxy} if cfg.model.proxy else {}),  # the model that selects
              "device": cfg.model.device,
              "dtype": cfg.model.dtype}

    def do(folder: Path) -> dict:
        from mint.model.distributed import run_alone

        if ctx.run.world > 1:  # rank 0 alone, as one process: the adapter of a single-process run
            run_alone(warmup_call, cfg, ctx.train_path, folder)
        else:
            warmup_call(cfg, ctx.train_path, folder)
        return {"dir": ctx.run.rel(folder)}

    ctx.infos["warmup"] = ctx.run.step("warmup", inputs, do)


def grads(ctx: Context) -> None:
    cfg, warm = ctx.cfg, ctx.infos["warmup"]
    # cache_mb changes how fast, never what: not part of the key; the keys that came with the
    # streaming and sparse projections count only when changed, so earlier runs are not redone
    default = asdict(GradsConfig())
    settings = {k: v for k, v in asdict(cfg.grads).items()
                if k != "cache_mb" and not (k in _ADDED_GRADS_KEYS and v == default[k])}
    inputs = {"warmup": warm.key, "grads": settings, "render": ctx.common["render"], "seed": cfg.seed,
              "device": cfg.model.device, "dtype": cfg.model.dtype}

    def do(folder: Path) -> dict:
        grads_call(cfg, ctx.train_path, ctx.run.abs(warm.outputs["dir"]), folder)
        return {"dir": ctx.run.rel(folder)}

    ctx.infos["grads"] = ctx.run.step("grads", inputs, do, every_rank=True)  # shards spread over the ranks


def select(ctx: Context) -> None:
    cfg, grads_info = ctx.cfg, ctx.infos["grads"]

    def do(folder: Path) -> dict:
        result = select_call(cfg, ctx.run.abs(grads_info.outputs["dir"]), folder, ctx.train_path, overwrite=True)
        return {"dir": ctx.run.rel(folder), "alpha": result.alpha}

    # partition and second_round join the key only when set, so runs made before these settings
    # existed stay up to date; every rank: run_selection spreads the parts of a partitioned
    # selection over them (rank 0 writes)
    unset = {"partition": "random", "second_round": False}
    selection = {k: v for k, v in asdict(cfg.selection).items() if not (k in unset and v == unset[k])}
    info = ctx.run.step("select", {"grads": grads_info.key, "selection": selection, "seed": cfg.seed}, do,
                        every_rank=True)
    ctx.infos["select"] = info
    ctx.select_dir = ctx.run.abs(info.outputs["dir"])


def export(ctx: Context) -> None:
    def do(folder: Path) -> dict:
        from mint.pipeline.export import export_coreset

        out = export_coreset(ctx.train_path, ctx.select_dir, folder, assistant_turns=ctx.cfg.data.assistant_turns,
                             seed=ctx.cfg.seed)
        return {"dir": ctx.run.rel(folder), "ratios": sorted(out)}

    # the exports' layout version: the ShareGPT and TRL files and the axolotl training keys came with 2
    inputs = {"select": ctx.infos["select"].key, "layout": 2, "assistant_turns": ctx.cfg.data.assistant_turns}
    ctx.infos["export"] = ctx.run.step("export", inputs, do)


def _trained_coreset(ctx: Context) -> dict:
    """The coreset of `train.ratio`, as listed by the select step's summary.json."""
    from mint.pipeline.coresets import check_source, list_coresets, load_coreset, same_ratio

    ratio = ctx.cfg.train_ratio()
    found = list_coresets(ctx.select_dir)
    match = [r for r in found if same_ratio(r, ratio)]
    if not match:
        raise MintError(f"no coreset for train.ratio {ratio} in {ctx.select_dir}; it has {sorted(found)}")
    coreset = load_coreset(found[match[0]])
    check_source(coreset, ctx.train_path, ctx.n_records, data_sha256=ctx.sha(ctx.train_path))
    return {"ratio": ratio, "k": len(coreset.indices), "indices": coreset.indices, "weights": coreset.weights}


def train(ctx: Context) -> None:
    """train_coreset, then train_random and train_full when asked, all with the same settings."""
    cfg, t = ctx.cfg, ctx.cfg.train
    ctx.coreset = _trained_coreset(ctx)
    settings = {"epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
                **trainer_key(t), **_world()}
    common = {**ctx.common, "lora": asdict(cfg.lora), "train": settings, "device": cfg.model.device,
              "dtype": cfg.model.dtype}

    def trainer(idx, w, weighting) -> Callable[[Path], dict]:
        def do(folder: Path) -> dict:
            out = train_call(cfg, ctx.train_path, folder, indices=idx, weights=w, weighting=weighting, overwrite=True)
            return {"adapter": ctx.run.rel(Path(out) / "adapter"),
                    "n_train": len(idx) if idx is not None else ctx.n_records}
        return do

    c = ctx.coreset
    if c["weights"] is None and t.weighting != "none":
        raise MintError(f"the coreset of ratio {c['ratio']:.2f} in {ctx.select_dir} has no 'weights' array, so "
                        f"train.weighting {t.weighting} has nothing to apply; run the select step again (delete "
                        f"{ctx.select_dir}) or set train.weighting none")
    ctx.trained["coreset"] = ctx.run.step(  # data parallel under torchrun
        "train_coreset", {**common, "select": ctx.infos["select"].key, "ratio": c["ratio"], "weighting": t.weighting},
        trainer(c["indices"], c["weights"], t.weighting), every_rank=True)
    if t.random_baseline:
        from mint.model.warmup import random_subset_indices

        # the same subset as `mint train --random RATIO`, from a stream apart from the warm-up sample's
        rand_idx = random_subset_indices(ctx.n_records, c["ratio"], cfg.seed)
        ctx.trained["random"] = ctx.run.step(
            "train_random", {**common, "n": ctx.n_records, "indices_sha256": sha256_bytes(rand_idx.tobytes())},
            trainer(rand_idx, None, "none"), every_rank=True)
    if t.full_baseline:
        ctx.trained["full"] = ctx.run.step("train_full", {**common, "n": ctx.n_records}, trainer(None, None, "none"),
                                           every_rank=True)


def evaluate(ctx: Context) -> None:
    """eval/<label> for the base model and every trained adapter, on the held-out file."""
    cfg = ctx.cfg
    if ctx.eval_path is None:
        log.warning("no held-out file (data.eval): evaluation skipped")
        return
    e = cfg.eval
    inputs = {"model": cfg.model.name, "eval_data": ctx.sha(ctx.eval_path),
              "render": render_key(cfg, _examples(cfg, ctx.eval_path)),
              "eval": {k: v for k, v in asdict(e).items() if k != "base"}, "device": cfg.model.device,
              "dtype": cfg.model.dtype}
    loaded: list[Any] = []  # the base model, loaded once for every evaluation that runs

    def evaluator(label: str) -> Callable[[Path], dict]:
        def do(folder: Path) -> dict:
            from mint.model.modeling import load_model_and_tokenizer

            if not loaded:
                loaded.append(load_model_and_tokenizer(cfg.model.name, device=cfg.model.device, dtype=cfg.model.dtype))
            adapter = ctx.run.abs(ctx.trained[label].outputs["adapter"]) if label != "base" else None
            eval_call(cfg, ctx.eval_path, adapter, folder, model_and_tokenizer=loaded[0])
            return {"metrics": ctx.run.rel(folder / "metrics.json")}
        return do

    for label in (["base"] if e.base else []) + list(ctx.trained):
        upstream = ctx.trained[label].key if label != "base" else None
        # every rank: the held-out batches are spread over them, rank 0 writes the metrics
        info = ctx.run.step(f"eval/{label}", {**inputs, "adapter_step": upstream}, evaluator(label), every_rank=True)
        ctx.metrics[label] = read_json(ctx.run.abs(info.outputs["metrics"]))


# The pipeline, in order. Each entry reads what the earlier ones left in the Context.
STEPS: tuple[tuple[str, Callable[[Context], None]], ...] = (
    ("data", data),
    ("warmup", warmup),
    ("grads", grads),
    ("select", select),
    ("export", export),
    ("train", train),
    ("eval", evaluate),
)
