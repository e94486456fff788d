"""Weighted LoRA training: the warm-up (a random sample, unit weights) and the final training on
a coreset (indices + weights) share this one code path, run by `transformers.Trainer`
(`mint.model.hf_trainer`; docs/design.md section 5).

The loss of one optimizer step is

    sum over the examples i in the step of  c_i * l_i / n_step,      c_i = w_i / mean(w)

where ``l_i`` is example i's response-token mean loss, the mean of ``w`` is taken over the whole
coreset and ``n_step`` is the number of examples in the step (``batch_size * grad_accum *
world_size``, fewer in the last one). The update therefore depends on the weights and not on how
a step is split into forward passes or processes. With ``weighting="sampling"`` the examples are
drawn with probability proportional to ``w`` (with replacement, as many per epoch as the coreset
has) and ``c_i = 1``; with ``none``, ``c_i = 1``. `accumulate_step` is the plain reference of one
step (a loop of forward/backward passes), which the tests and bench/train.py compare against.

Output folder:

- ``adapter/``: the LoRA adapter (peft ``save_pretrained``);
- ``optimizer.safetensors``: the AdamW state keyed by the adapter's parameter names (written and
  read by `mint.model.checkpoint`);
- ``tensorboard/``: the Trainer's event files, with ``report_to`` tensorboard;
- ``manifest.json``: config, data fingerprint, base model, versions, seed, loss history (mint's
  per step and the Trainer's ``log_history``); written last, so its presence marks a finished run.

The folder is built under a temporary name and renamed when complete: Ctrl-C leaves nothing
half-written (but the Trainer checkpoint beside it, which a rerun resumes from), and a second
call with the same settings returns at once. Training seeds torch's generators inside the call
only (`mint.model.modeling.seeded_torch`): the caller's are left as they were.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mint._io import atomic_write_json, read_json, sha256_bytes
from mint._folders import check_writable, new_temp_folder, own_entries, publish_folder, remove_stale_temps
from mint.choices import LR_SCHEDULER_TYPES, WEIGHTINGS
from mint.errors import MintError
from mint.model.distributed import barrier
from mint.model.modeling import LoraSettings  # light: modeling imports torch/transformers/peft inside functions
from mint.records import check_subset, source_format, source_sha256

__all__ = [
    "WEIGHTINGS",
    "MANIFEST_FORMAT",
    "train_lora",
    "loss_coefficients",
    "accumulate_step",
    "read_train_manifest",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "mint.train/1"  # a recorded format name, not a module path


def loss_coefficients(weights: np.ndarray, weighting: str) -> np.ndarray:
    """Per-example loss multipliers c_i: ``w_i / mean(w)`` for ``loss``, else ones."""
    if weighting == "loss":
        return (weights / weights.mean()).astype(np.float64)
    return np.ones(len(weights), dtype=np.float64)


def accumulate_step(model, tokenized: Sequence, coefs: Sequence[float], *, batch_size: int,
                    pad_id: int, bos_id: int | None) -> tuple[float, float]:
    """Forward/backward passes for one optimizer step over ``tokenized`` (in micro-batches of
    ``batch_size``), adding ``sum_i c_i * l_i / n_step`` to the gradients. Returns (weighted loss,
    plain mean loss) of the step. The caller zeroes gradients and steps the optimizer."""
    import torch

    from mint.model.data import collate
    from mint.model.modeling import response_token_losses

    n_step = len(tokenized)
    total_weighted = total_plain = 0.0
    for start in range(0, n_step, batch_size):
        batch = collate(tokenized[start:start + batch_size], "sft", pad_id=pad_id, bos_id=bos_id)
        losses = response_token_losses(model, batch)
        c = torch.as_tensor(np.asarray(coefs[start:start + batch_size]), dtype=losses.dtype, device=losses.device)
        loss = (c * losses).sum() / n_step
        loss.backward()
        total_weighted += float(loss.detach())
        total_plain += float(losses.detach().sum()) / n_step
    return total_weighted, total_plain


# ---------------------------------------------------------------------------------------------
# The output folder


def read_train_manifest(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise MintError(f"{path} is unreadable ({e}); remove the folder or pass overwrite") from e
    return manifest if isinstance(manifest, dict) else None


def _prepare_output(output_dir: Path, config: dict, overwrite: bool) -> bool:
    """True when output_dir already holds this exact finished run."""
    if not output_dir.exists():
        return False
    if not output_dir.is_dir():
        raise MintError(f"output {output_dir} exists and is not a folder; choose another output folder")
    manifest = read_train_manifest(output_dir)
    if manifest is not None and manifest.get("format") == MANIFEST_FORMAT and manifest.get("config") == config:
        if (output_dir / "adapter" / "adapter_config.json").is_file():
            return True
    if overwrite or not own_entries(output_dir):
        return False
    if manifest is not None and isinstance(manifest.get("config"), dict):
        old = manifest["config"]
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise MintError(f"{output_dir} holds a training run with other settings (differing: {', '.join(diff)}); "
                        "choose another output folder or pass overwrite (--overwrite) to replace it")
    raise MintError(f"{output_dir} is not empty and holds no finished training run; choose another output "
                    "folder or pass overwrite (--overwrite) to replace its contents")


# ---------------------------------------------------------------------------------------------
# The training run


# Over 60 lines only by its signature (one keyword per option) and docstring; the body is ~50.
def train_lora(
    model_name_or_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    indices: Sequence[int] | np.ndarray | Callable[[int], Any] | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    weighting: str = "loss",
    epochs: float = 3.0,
    lr: float = 2e-5,
    batch_size: int = 8,
    grad_accum: int = 1,
    lora: LoraSettings | None = None,
    max_length: int = 512,
    seed: int = 0,
    template: str = "auto",
    schema: str = "auto",
    long_prompts: str = "error",
    assistant_turns: str = "all",
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.03,
    max_grad_norm: float | None = 1.0,
    lr_scheduler_type: str = "linear",
    gradient_checkpointing: bool = False,
    bf16: bool = False,
    fp16: bool = False,
    report_to: Sequence[str] | str = ("none",),
    resume_from_checkpoint: bool = True,
    device: str = "auto",
    dtype: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    checkpoint_seconds: float = 300.0,
    kind: str = "train",
    extra: dict | None = None,
) -> Path:
    """Train a LoRA adapter on ``data_path`` (or its ``indices``, weighted by ``weights``) and
    save it with its AdamW state and a manifest in ``output_dir``; returns ``output_dir``.

    indices: record indices to train on (None: all), or a function of the number of records
    returning them (a seeded sample drawn without reading the data twice, as the warm-up does).
    epochs: passes over the subset (fractions allowed: the example stream is cut there).
    lr: AdamW learning rate, warmed up over ``warmup_ratio`` of the steps (the floor) and then
    decayed by ``lr_scheduler_type`` (a transformers scheduler name: linear, cosine, constant_with_warmup,
    ...). batch_size: examples per forward pass and process; grad_accum: forward passes per
    optimizer step (the update does not depend on the split, nor on the number of processes under
    torchrun; a step holds ``batch_size * grad_accum * world_size`` examples). lora: a
    `mint.model.modeling.LoraSettings` (None: its defaults). max_grad_norm: gradient clipping (None:
    off). gradient_checkpointing, bf16, fp16, report_to: as `transformers.TrainingArguments` names
    them (bf16/fp16: mixed precision over float32 LoRA weights, fp16 with loss scaling; report_to:
    "tensorboard", "wandb", ... or None; TensorBoard writes into ``output_dir/tensorboard``).
    checkpoint_seconds: how often a Trainer checkpoint (LoRA weights, optimizer, schedule, RNG) is
    saved beside ``output_dir``; with ``resume_from_checkpoint`` an interrupted run with the same
    settings continues from it and ends with the same adapter as an uninterrupted one (False:
    start over). ``extra``: more provenance for the manifest (kept out of the resume check).
    Under torchrun every rank calls this with the same arguments; rank 0 writes ``output_dir``.
    """
    from mint.model.data import load_examples, token_settings
    from mint.model.hf_trainer import run_training
    from mint.model.modeling import resolve_device, resolve_dtype, seeded_torch

    from mint.model.distributed import process_group

    lora = _check_options(weighting=weighting, batch_size=batch_size, grad_accum=grad_accum, epochs=epochs, lr=lr,
                          warmup_ratio=warmup_ratio, lora=lora, bf16=bf16, fp16=fp16,
                          lr_scheduler_type=lr_scheduler_type)
    report = _report_to(report_to)
    rank, world, dist = process_group()
    data_path, output_dir = Path(data_path), Path(output_dir)
    check_writable(output_dir)

    examples = load_examples(data_path, schema=schema, assistant_turns=assistant_turns)
    if callable(indices):
        indices = indices(len(examples))
    idx, w = check_subset(indices, weights, len(examples), source="coreset")
    device = resolve_device(device)
    if world > 1 and device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"  # one GPU per process
    # the detected schema, so that "auto" and an explicit schema name give the same fingerprint
    data_settings = token_settings(examples, template=template, max_length=max_length, long_prompts=long_prompts,
                                   assistant_turns=assistant_turns)
    config = _train_config(
        kind=kind, base_model=model_name_or_dir, data_path=data_path, data_settings=data_settings,
        n_records=len(examples), idx=idx, w=w, weighting=weighting, epochs=epochs, lr=lr, batch_size=batch_size,
        grad_accum=grad_accum, lora=lora, seed=seed, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
        max_grad_norm=max_grad_norm, torch_dtype=resolve_dtype(dtype, device), lr_scheduler_type=lr_scheduler_type,
        gradient_checkpointing=gradient_checkpointing, bf16=bf16, fp16=fp16, world_size=world)
    done = _prepare_output(output_dir, config, overwrite)
    barrier(dist)  # every rank has looked before rank 0 changes anything
    if done:
        log.info("%s already holds this finished run; nothing to do", output_dir)
        return output_dir
    run = dict(model_name_or_dir=model_name_or_dir, device=device, dtype=dtype, lora=lora, progress=progress,
               checkpoint_seconds=checkpoint_seconds, assistant_turns=assistant_turns, report_to=report,
               resume=resume_from_checkpoint)
    if rank != 0:  # the other ranks train; rank 0 alone writes the folder
        with seeded_torch(seed, device):
            run_training(examples, idx, w, config, None, checkpoints=_checkpoints(output_dir), **run)
        barrier(dist)
        return output_dir

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(output_dir)  # what a killed run left
    output_dir.with_name(f".{output_dir.name}.checkpoint.pt").unlink(missing_ok=True)  # mint < 0.2's checkpoint
    tmp = new_temp_folder(output_dir)
    try:
        with seeded_torch(seed, device):  # LoRA init and dropout; the caller's generators are restored after
            manifest = run_training(examples, idx, w, config, tmp, checkpoints=_checkpoints(output_dir), **run)
        manifest.update({
            "data": {"path": _absolute(data_path), "file_sha256": source_sha256(data_path),
                     "fingerprint": config["data_fingerprint"], "settings": data_settings},
            "extra": extra or {},
        })
        np.save(tmp / "indices.npy", idx)  # which records were trained on, for inspection
        atomic_write_json(tmp / "manifest.json", manifest)  # last: marks the run finished
        publish_folder(tmp, output_dir)
        shutil.rmtree(_checkpoints(output_dir), ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not any(_checkpoints(output_dir).glob("checkpoint-*")):  # nothing to resume from
            shutil.rmtree(_checkpoints(output_dir), ignore_errors=True)
        raise
    finally:
        barrier(dist)
    return output_dir


def _checkpoints(output_dir: Path) -> Path:
    """The Trainer's checkpoint folder of a run: beside its output, removed once it is published."""
    return output_dir.with_name(f".{output_dir.name}.checkpoints")


def _absolute(data_path: Path) -> str:
    """A local data path made absolute for the manifest; a hub dataset id as it is."""
    return str(data_path) if source_format(data_path) == "hub" else str(data_path.resolve())


def _check_options(*, weighting, batch_size, grad_accum, epochs, lr, warmup_ratio, lora, bf16, fp16,
                   lr_scheduler_type) -> LoraSettings:
    """Refuse bad options before anything is read; the LoRA settings to use."""
    if weighting not in WEIGHTINGS:
        raise MintError(f"unknown weighting {weighting!r}; use one of {', '.join(WEIGHTINGS)}")
    for name, value in (("batch_size", batch_size), ("grad_accum", grad_accum)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise MintError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(epochs, (int, float)) and epochs > 0 and math.isfinite(epochs)):
        raise MintError(f"epochs must be > 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise MintError(f"lr must be > 0, got {lr!r}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise MintError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if bf16 and fp16:
        raise MintError("bf16 and fp16 are both set; choose one mixed precision (or neither)")
    if lr_scheduler_type not in LR_SCHEDULER_TYPES:
        raise MintError(f"unknown lr_scheduler_type {lr_scheduler_type!r}; use one of {', '.join(LR_SCHEDULER_TYPES)}")
    lora = lora if lora is not None else LoraSettings()
    if not isinstance(lora, LoraSettings):
        raise MintError(f"lora must be a mint.model.modeling.LoraSettings, got {type(lora).__name__}")
    return lora


def _report_to(report_to) -> list[str]:
    """``report_to`` as a list of transformers' logging integrations, refused before any work when
    a name is unknown or its package is missing."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    report = [report_to] if isinstance(report_to, str) else list(report_to or [])
    unknown = [name for name in report if name not in ("none", "all", *INTEGRATION_TO_CALLBACK)]
    if unknown:
        raise MintError(f"report_to {', '.join(unknown)} is not a logging integration transformers knows; use "
                        f"none or some of {', '.join(INTEGRATION_TO_CALLBACK)}")
    if "tensorboard" in report:
        import importlib.util

        if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
            raise MintError("report_to tensorboard needs the tensorboard package; install it with: "
                            "pip install 'mint-coreset[tensorboard]' (or set report_to none)")
    return report


def _train_config(*, kind, base_model, data_path: Path, data_settings: dict, n_records: int, idx, w, weighting,
                  epochs, lr, batch_size, grad_accum, lora: LoraSettings, seed, weight_decay, warmup_ratio,
                  max_grad_norm, torch_dtype, lr_scheduler_type="linear", gradient_checkpointing=False, bf16=False,
                  fp16=False, world_size=1) -> dict:
    """What determines the result: the resume check compares it, the manifest records it. The
    Trainer's settings enter only when they differ from the defaults, so that a run made before
    they existed still matches its settings."""
    from mint.model.data import dataset_fingerprint

    return {
        "kind": kind,
        "base_model": str(base_model),
        "data_fingerprint": dataset_fingerprint(data_path, data_settings),
        "n_records": n_records,
        "indices_sha256": sha256_bytes(idx.tobytes()),
        "weights_sha256": sha256_bytes(w.tobytes()),
        "n_train": int(idx.size),
        "weighting": weighting,
        "epochs": float(epochs),
        "lr": float(lr),
        "batch_size": int(batch_size),
        "grad_accum": int(grad_accum),
        "lora": lora.to_dict(),
        **data_settings,
        "seed": int(seed),
        "weight_decay": float(weight_decay),
        "warmup_ratio": float(warmup_ratio),
        "max_grad_norm": None if max_grad_norm is None else float(max_grad_norm),
        "dtype": str(torch_dtype).replace("torch.", ""),
        **({"lr_scheduler_type": lr_scheduler_type} if lr_scheduler_type != "linear" else {}),
        **({"gradient_checkpointing": True} if gradient_checkpointing else {}),
        **({"bf16": True} if bf16 else {}),
        **({"fp16": True} if fp16 else {}),
        **({"world_size": int(world_size)} if world_size > 1 else {}),
    }


def _example_steps(n: int, config: dict, w: np.ndarray, rng: np.random.Generator) -> tuple[int, list[list[int]]]:
    """(examples seen, the positions of each optimizer step): ``epochs * n`` positions, one
    permutation (or weighted draw) per epoch, cut into steps of ``batch_size * grad_accum``."""
    n_total = max(1, int(round(config["epochs"] * n)))
    stream = []
    while len(stream) < n_total:
        if config["weighting"] == "sampling":
            stream.extend(rng.choice(n, size=n, replace=True, p=w / w.sum()).tolist())
        else:
            stream.extend(rng.permutation(n).tolist())
    stream = stream[:n_total]
    per_step = config["batch_size"] * config["grad_accum"] * config.get("world_size", 1)
    return n_total, [stream[s:s + per_step] for s in range(0, n_total, per_step)]
