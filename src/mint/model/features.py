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
                     projection: str = "rademacher", shard_size: int = 64, device: str = "auto",
                     dtype: str = "auto", storage_dtype: str = "float32", cache_bytes: int = 1 << 30,
                     overwrite: bool = False, progress: bool = True) -> Path:
    """Gradient features (SFT, PT, IFL) of every example of `data_path` into the store
    `output_dir` (see `mint.model.store`); returns `output_dir`. Resumes an interrupted run.

    proj_dim: an int, a list of ints (all from one pass), or None for raw gradients.
    grad_type: adam (warm-up AdamW state, docs/design.md section 2), sgd or sign.
    batch_size: examples per forward/backward pass (results do not depend on it beyond float
    rounding). long_prompts: `error` or `truncate` for prompts that alone fill max_length (see
    `mint.model.data.tokenize_examples`). shard_size: examples per resumable shard, also the number
    projected together (2 * shard_size rows per projection call; a constant of the store, since
    it fixes the batches). dtype: the model's precision (`mint.model.modeling.resolve_dtype`; the
    store records the resolved one as `model_dtype`). storage_dtype: float32, or float16 for
    the normalised rows the selection reads (half their disk and I/O; raw rows stay float32). cache_bytes: memory for cached projection
    tiles. overwrite: replace a store made with other settings (its partial progress is lost).
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
                               cache_bytes=cache_bytes)
    settings = _settings(setup, projector, data_path=data_path, render=render, model_name_or_dir=model_name_or_dir,
                         grad_type=grad_type, seed=seed)
    info = {"data_path": str(data_path), "warmup_dir": str(warmup_dir), "batch_size": batch_size,
            "world_size": world, "device": str(setup.device), "grad_dim": setup.collector.grad_dim,
            "dtype": dtype}
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
    if rank == 0:
        _warn_on_changes(output_dir, info, settings, warmup_dir, overwrite)
        store.prepare(overwrite=overwrite)
    barrier(dist)
    n_todo, elapsed = _compute_shards(store, setup, projector, tokenized, rank=rank, world=world,
                                      batch_size=batch_size, progress=progress)
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
                    progress: bool) -> tuple[int, float]:
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
                                  on_batch=bar.update, **ids)
            store.write_shard(k, rows)
    return n_todo, time.perf_counter() - started


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
