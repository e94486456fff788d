"""The gradient-feature step (docs/design.md section 2): data + base model + warm-up adapter -> feature
store (`mint.model.store`). The tensor maths (per-example gradients, preconditioning, one shard's
features) is in `mint.model.gradients`; this module loads, checks, records and distributes.

`compute_features` runs in stages: check the inputs; load the model with the warm-up adapter and
its AdamW state (`_load_adapter_model`); describe what identifies the features (`_settings`);
compute this rank's missing shards (`_compute_shards`); merge on rank 0.

Work is split in fixed shards of examples (resumable, see `mint.model.store`); under `torchrun`
each rank computes a contiguous range of shards and rank 0 merges.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mint._folders import check_writable
from mint.choices import GRAD_TYPES
from mint.errors import MintError
from mint.records import source_format, source_sha256
from mint.model.distributed import barrier, process_group
from mint.model.gradients import LoraGradCollector, Preconditioner, shard_features

__all__ = ["compute_features"]

log = logging.getLogger(__name__)


# Over 60 lines only by its signature and docstring; the body is ~45, one line or call per stage.
def compute_features(model_name_or_dir, data_path, warmup_dir, output_dir, *, proj_dim=8192,
                     grad_type: str = "adam", batch_size: int = 8, max_length: int = 512, seed: int = 0,
                     template: str = "auto", schema: str = "auto", long_prompts: str = "error",
                     assistant_turns: str = "all",
                     projection: str = "rademacher", sjlt_s: int = 2, shard_size: int = 64, device: str = "auto",
                     dtype: str = "auto", storage_dtype: str = "float32", cache_mb: int = 1024,
                     buffer_mb: int = 1024, overwrite: bool = False, progress: bool = True) -> Path:
    """Gradient features (SFT, PT, IFL) of every example of `data_path` into the store
    `output_dir` (see `mint.model.store`); returns `output_dir`. Resumes an interrupted run.

    proj_dim: an int, a list of ints (all from one pass), or None for raw gradients.
    grad_type: adam (warm-up AdamW state, docs/design.md section 2), sgd or sign.
    batch_size: examples per forward/backward pass (results do not depend on it beyond float
    rounding). long_prompts: `error` or `truncate` for prompts that alone fill max_length (see
    `mint.model.data.tokenize_examples`). projection: rademacher | gaussian (dense tiles) | sjlt
    (sparse, `sjlt_s` entries per coordinate) | trak (`mint.model.trak_projector`). shard_size:
    examples per resumable shard (a constant of the store, since it fixes the batches). dtype:
    the model's precision (`mint.model.modeling.resolve_dtype`; the store records the resolved
    one as `model_dtype`); gradients and features are float32 whatever it is. storage_dtype:
    float32, or float16 for the normalised rows the selection reads (half their disk and I/O;
    raw rows stay float32). cache_mb: MiB of cached projection tiles or hashes. buffer_mb: MiB of
    gradient rows waiting for the projection (the whole shard when it fits, else as many
    micro-batches as fit; `mint.model.gradients.shard_features`). overwrite: replace a store made
    with other settings (its partial progress is lost). The estimated peak memory is logged
    before the work starts, and a run that cannot fit is refused (`mint.model.memory`).
    Under `torchrun`, each rank computes a contiguous range of shards and rank 0 merges."""
    from mint.model.data import load_examples, token_settings, tokenize_examples
    from mint.model.projection import make_projector
    from mint.model.store import FeatureStore

    data_path, warmup_dir, output_dir = _check_inputs(data_path, warmup_dir, output_dir, grad_type=grad_type,
                                                      batch_size=batch_size)
    rank, world, dist = process_group()
    device = _rank_device(device)
    examples = load_examples(data_path, schema=schema, assistant_turns=assistant_turns)
    setup = _load_adapter_model(model_name_or_dir, warmup_dir, grad_type=grad_type, device=device, dtype=dtype)
    # the same rendering settings as mint.model.train, so warm-up, features and training share a fingerprint
    render = token_settings(examples, template=template, max_length=max_length, long_prompts=long_prompts,
                            assistant_turns=assistant_turns)
    projector = make_projector(setup.collector.grad_dim, proj_dim, seed, kind=projection, device=setup.device,
                               cache_bytes=cache_mb << 20, sjlt_s=sjlt_s)
    settings = _settings(setup, projector, data_path=data_path, render=render, model_name_or_dir=model_name_or_dir,
                         grad_type=grad_type, seed=seed)
    buffer_rows = _buffer_rows(buffer_mb, setup.collector.grad_dim, batch_size=batch_size, shard_size=shard_size)
    estimate, check_memory = _memory(setup, projector, batch_size=batch_size, max_length=max_length,
                                     grad_type=grad_type, projection=projection, sjlt_s=sjlt_s, cache_mb=cache_mb,
                                     buffer_rows=buffer_rows, shard_size=shard_size)
    info = {"data_path": str(data_path), "warmup_dir": str(warmup_dir), "batch_size": batch_size,
            "world_size": world, "device": str(setup.device), "grad_dim": setup.collector.grad_dim,
            "dtype": dtype, "cache_mb": cache_mb, "buffer_mb": buffer_mb,
            "buffer_rows": buffer_rows or 2 * shard_size, "memory_estimate_bytes": estimate.total}
    store = FeatureStore(output_dir, n=len(examples), dims=list(projector.keys), shard_size=shard_size,
                         settings=settings, info=info, normalized_dtype=storage_dtype)
    if store.is_complete() and not overwrite:
        store.prepare()  # refuses a complete store made with other settings
        damage = store.damage()
        if damage is None:
            log.info("%s already holds complete features for these settings; nothing to do", output_dir)
            return output_dir
        log.warning("the feature store is damaged (%s); computing the features again", damage)
        store.clear()
    # after that check (a finished store needs no tokens), before anything is written (a bad record stops here)
    tokenized = tokenize_examples(examples, setup.tokenizer, max_length=max_length, template=template,
                                  long_prompts=long_prompts, assistant_turns=assistant_turns,
                                  progress=progress and rank == 0)
    # refuses a step that cannot fit, before anything is written; with the response-only head the
    # logits are counted at the data's labelled positions
    store.info["memory_estimate_bytes"] = check_memory(tokenized).total
    if rank == 0:
        _warn_on_changes(output_dir, info, settings, warmup_dir, overwrite)
        store.prepare(overwrite=overwrite)
    barrier(dist)
    n_todo, elapsed = _compute_shards(store, setup, projector, tokenized, rank=rank, world=world,
                                      batch_size=batch_size, buffer_rows=buffer_rows, progress=progress)
    barrier(dist)
    if rank == 0:
        store.merge(progress=progress)
    barrier(dist)
    rate = n_todo / elapsed if elapsed > 0 else float("nan")
    log.info("rank %d: %d examples in %.1f s (%.2f examples/s), grad_dim %d, grad_type %s, dims %s",
             rank, n_todo, elapsed, rate, setup.collector.grad_dim, grad_type, ", ".join(map(str, projector.keys)))
    if rank == 0:
        log.info("features of %d examples (sft, pt, ifl; raw and normalised) written to %s", len(tokenized), output_dir)
    return output_dir


# ---------------------------------------------------------------------------------------------
# Stages


@dataclass
class _Setup:
    """The model side of the step, loaded once."""

    model: Any  # the peft model, eval mode, LoRA weights trainable
    tokenizer: Any
    adapter_dir: Path
    keys: list[str]  # LoRA parameter keys, in the collector's order
    collector: LoraGradCollector
    preconditioner: Preconditioner
    optimizer: dict | None  # the warm-up AdamW state (`_adam_state`); None unless grad_type is adam
    device: torch.device


def _check_inputs(data_path, warmup_dir, output_dir, *, grad_type: str, batch_size) -> tuple[Path, Path, Path]:
    if grad_type not in GRAD_TYPES:
        raise MintError(f"unknown grad_type {grad_type!r}; use one of {', '.join(GRAD_TYPES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MintError(f"batch_size must be a positive integer, got {batch_size!r}")
    data_path, warmup_dir, output_dir = Path(data_path), Path(warmup_dir), Path(output_dir)
    if not data_path.exists() and source_format(data_path) != "hub":
        raise MintError(f"data file {data_path} not found")
    if int(os.environ.get("RANK", "0")) == 0:
        check_writable(output_dir, "feature store folder")
    return data_path, warmup_dir, output_dir


def _rank_device(device: str) -> str:
    """`auto` on a GPU machine: this process's GPU (LOCAL_RANK under torchrun)."""
    if device == "auto" and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    return device


def _load_adapter_model(model_name_or_dir, warmup_dir: Path, *, grad_type: str, device: str, dtype: str) -> _Setup:
    from mint.model.modeling import lora_named_parameters, load_lora, load_model_and_tokenizer
    from mint.model.warmup import load_warmup_state

    adapter_dir = _adapter_dir(warmup_dir)
    # the warm-up folder is checked before the (possibly large) model loads
    warm_state = load_warmup_state(warmup_dir) if grad_type == "adam" else None
    model, tokenizer = load_model_and_tokenizer(model_name_or_dir, device=device, dtype=dtype)
    model = load_lora(model, adapter_dir, trainable=True)
    model.eval()  # no dropout: features must be deterministic
    keys = [k for k, _ in lora_named_parameters(model)]
    collector = LoraGradCollector(model)
    if len(keys) != len(collector.names):
        raise MintError(f"the adapter in {adapter_dir} trains parameters besides the LoRA weights (e.g. "
                        "modules_to_save); pass the output folder of `mint warmup`, which holds a plain LoRA adapter")
    optimizer = _adam_state(warm_state, warmup_dir, keys) if grad_type == "adam" else None
    model_device = next(model.parameters()).device
    adam = {k: optimizer[k] for k in ("exp_avg", "exp_avg_sq", "betas", "eps")} if optimizer else {}
    preconditioner = Preconditioner(grad_type, device=model_device, **adam)
    return _Setup(model, tokenizer, adapter_dir, keys, collector, preconditioner, optimizer, model_device)


def _settings(setup: _Setup, projector, *, data_path: Path, render: dict, model_name_or_dir, grad_type: str,
              seed: int) -> dict:
    """What identifies the features: a store with other settings is refused (see `FeatureStore`)."""
    from mint.model.data import dataset_fingerprint
    from mint.model.modeling import adapter_sha256

    optimizer = setup.optimizer
    return {
        "data_fingerprint": dataset_fingerprint(data_path, render),
        "data_sha256": source_sha256(data_path),
        "render": render,
        "model": str(model_name_or_dir),
        "adapter_hash": adapter_sha256(setup.adapter_dir),
        "grad_type": grad_type,
        "optimizer": {k: optimizer[k] for k in ("betas", "eps", "step")} if optimizer else None,
        "projection": projector.describe(),
        "proj_dims": list(projector.keys),
        "seed": seed,
        "param_keys_sha256": _keys_hash(setup.keys),
        "model_dtype": str(next(setup.model.parameters()).dtype).removeprefix("torch."),
    }


def _compute_shards(store, setup: _Setup, projector, tokenized, *, rank: int, world: int, batch_size: int,
                    buffer_rows: int | None, progress: bool) -> tuple[int, float]:
    """Compute and write this rank's shards that are not done yet; (examples done, seconds)."""
    from tqdm.auto import tqdm

    from mint.model.data import collate_ids

    mine = range(rank * store.num_shards // world, (rank + 1) * store.num_shards // world)
    todo = [k for k in mine if not store.shard_done(k)]
    n_todo = sum(store.shard_range(k)[1] - store.shard_range(k)[0] for k in todo)
    if len(todo) < len(mine):
        log.info("rank %d: resuming, %d of %d shards already done", rank, len(mine) - len(todo), len(mine))
    ids = collate_ids(setup.tokenizer)
    started = time.perf_counter()
    # counts advance by half an example per view; show whole examples
    fmt = "{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
    with tqdm(total=n_todo, unit="ex", desc=f"grads[{rank}]" if world > 1 else "grads", bar_format=fmt,
              disable=not progress or rank != 0) as bar:
        for k in todo:
            start, end = store.shard_range(k)
            rows = shard_features(setup.model, tokenized[start:end], collector=setup.collector,
                                  preconditioner=setup.preconditioner, projector=projector, batch_size=batch_size,
                                  buffer_rows=buffer_rows, on_batch=bar.update, **ids)
            store.write_shard(k, rows)
    return n_todo, time.perf_counter() - started


def _buffer_rows(buffer_mb: int, grad_dim: int, *, batch_size: int, shard_size: int) -> int | None:
    """Rows of the projection buffer: None (the whole shard, one call) when 2 * shard_size rows
    fit in buffer_mb, else as many as fit, at least one micro-batch."""
    fit = (buffer_mb << 20) // (4 * grad_dim)
    return None if fit >= 2 * shard_size else max(batch_size, fit)


def _memory(setup: _Setup, projector, *, batch_size: int, max_length: int, grad_type: str, projection: str,
            sjlt_s: int, cache_mb: int, buffer_rows: int | None, shard_size: int):
    """The estimated peak memory of the step (`mint.model.memory`) before the data is tokenized
    (logits at every position), logged, and the check to run once it is: `check(tokenized)`
    counts the logits at the most labelled positions a micro-batch can hold when the model has a
    response-only head, logs that estimate, raises a MintError naming the setting when it cannot
    fit in what is free on the device (CUDA) or in the available RAM (CPU), and returns it."""
    from mint.model.memory import check_feature_memory, estimate_feature_memory
    from mint.model.modeling import accepts_logits_to_keep

    shape = model_shape(setup.model, setup.collector)
    options = dict(max_length=max_length, grad_type=grad_type, projection=projection,
                   proj_dims=[k for k in projector.keys if k != "full"] or None, cache_bytes=cache_mb << 20,
                   sjlt_s=sjlt_s, tile_bytes=getattr(projector, "tile_rows", 0) * getattr(projector, "tile_cols", 0) * 4)
    rows = buffer_rows or 2 * shard_size

    def at_batch(b: int, logit_tokens=None):
        return estimate_feature_memory(shape, batch_size=b, buffer_rows=rows if buffer_rows is None else max(b, rows),
                                       logit_tokens=None if logit_tokens is None else logit_tokens(b), **options)

    def describe(estimate) -> None:
        log.info("estimated peak memory of the feature step on %s (batch_size %d, max_length %d, grad_dim %d, "
                 "projection %s): %s", setup.device, batch_size, max_length, shape.grad_dim, projection,
                 estimate.describe())

    estimate = at_batch(batch_size)
    describe(estimate)
    loaded = estimate.parts["weights"] + estimate.parts["lora"] // 2 + estimate.parts["adam_state"]

    def check(tokenized):
        logit_tokens = _labelled_bound(tokenized) if accepts_logits_to_keep(setup.model) else None
        refined = at_batch(batch_size, logit_tokens)
        if refined.total != estimate.total:
            describe(refined)
        check_feature_memory(refined, available=_free_memory(setup.device), allocated=loaded,
                             where=str(setup.device), batch_size=batch_size,
                             at_batch=lambda b: at_batch(b, logit_tokens))
        return refined
    return estimate, check


def _labelled_bound(tokenized):
    """`b -> ` the most labelled positions (those the response-only head computes logits for) a
    micro-batch of b examples can hold in either view: the sum of the b longest responses. An
    upper bound for any batching, so the estimate holds whatever order the shards take."""
    lengths = sorted((len(t.response_ids) for t in tokenized), reverse=True)
    return lambda b: sum(lengths[:b])


def model_shape(model, collector: LoraGradCollector):
    """`mint.model.memory.ModelShape` of a (peft) model and its gradient collector."""
    from mint.model.memory import ModelShape

    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    config = getattr(config, "text_config", None) or config  # multimodal configs nest the language model's
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    hidden = int(config.hidden_size)
    return ModelShape(n_params=sum(p.numel() for p in base), param_bytes=base[0].element_size(), hidden_size=hidden,
                      intermediate_size=int(getattr(config, "intermediate_size", None) or 4 * hidden),
                      num_layers=int(config.num_hidden_layers), vocab_size=int(config.vocab_size),
                      grad_dim=collector.grad_dim, lora_io=collector.io_width)


def _free_memory(device: torch.device) -> int | None:
    """Free bytes where the features are computed: the GPU's free memory, or MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        from mint._io import available_memory

        return available_memory()
    return None


# ---------------------------------------------------------------------------------------------
# Helpers


def _adapter_dir(warmup_dir: Path) -> Path:
    for candidate in (warmup_dir / "adapter", warmup_dir):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise MintError(f"{warmup_dir} holds no LoRA adapter (no adapter_config.json in it or in adapter/); "
                    "pass the output folder of `mint warmup`")


def _adam_state(state: dict, warmup_dir: Path, keys: list[str]) -> dict:
    """Flattened exp_avg / exp_avg_sq of `mint.model.warmup.load_warmup_state(warmup_dir)` in the
    order of `keys`, with betas, eps and step."""
    exp_avg, exp_avg_sq = state.get("exp_avg"), state.get("exp_avg_sq")
    if not exp_avg or not exp_avg_sq:
        raise MintError(f"{warmup_dir} has no optimizer state (exp_avg, exp_avg_sq), which grad_type 'adam' "
                        "needs; rerun `mint warmup` (it saves the state) or use --grad_type sgd")
    missing = [k for k in keys if k not in exp_avg or k not in exp_avg_sq]
    if missing:
        raise MintError(f"{warmup_dir}: the optimizer state has no entry for {missing[:3]} (it belongs to "
                        "another adapter); rerun `mint warmup`")
    m = torch.cat([torch.as_tensor(exp_avg[k]).float().flatten() for k in keys])
    v = torch.cat([torch.as_tensor(exp_avg_sq[k]).float().flatten() for k in keys])
    return {"exp_avg": m, "exp_avg_sq": v, "betas": [float(b) for b in state["betas"]],
            "eps": float(state["eps"]), "step": int(state.get("step", 0))}


def _warn_on_changes(output_dir: Path, info: dict, settings: dict, warmup_dir: Path, overwrite: bool) -> None:
    """Warnings for legal but surprising inputs: a resumed run with another batch size (new
    shards then differ from the old ones by float rounding only), and a warm-up trained on
    other data or rendering settings than the features."""
    from mint._io import read_json

    manifest_file = output_dir / "manifest.json"
    if manifest_file.is_file() and not overwrite:
        try:
            old = read_json(manifest_file).get("info", {})
        except (OSError, ValueError, AttributeError):
            old = {}
        if old.get("batch_size") not in (None, info["batch_size"]):
            log.warning("resuming %s with batch_size %s (the finished shards used %s): results agree to float "
                        "rounding, not byte for byte", output_dir, info["batch_size"], old["batch_size"])
    warm_manifest = warmup_dir / "manifest.json"
    if warm_manifest.is_file():
        try:
            warm_fp = (read_json(warm_manifest).get("config") or {}).get("data_fingerprint")
        except (OSError, ValueError, AttributeError):
            warm_fp = None
        if warm_fp and warm_fp != settings["data_fingerprint"]:
            log.warning("the warm-up in %s was trained on other data or rendering settings (data fingerprint "
                        "differs); features use its adapter as given", warmup_dir)


def _keys_hash(keys: list[str]) -> str:
    from mint._io import sha256_bytes

    return sha256_bytes("\n".join(keys).encode("utf-8"))
