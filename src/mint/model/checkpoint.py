"""The files of a training run besides the adapter: the final AdamW state (``optimizer.safetensors``,
which the warm-up hands to the gradient features), and which of the Trainer's mid-run checkpoints
(``.<output>.checkpoints/checkpoint-<step>``, written by `mint.model.hf_trainer`) a run resumes from.

``optimizer.safetensors`` holds the AdamW state keyed by the adapter's parameter names
(``<key>.exp_avg``, ``<key>.exp_avg_sq``, ``<key>.step``), with betas, eps and step as JSON in
the one metadata key ``mint_adamw``.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mint.errors import MintError

__all__ = ["OPTIMIZER_FILE", "HISTORY_FILE", "save_optimizer_state", "load_optimizer_state", "resume_point",
           "history_of"]

log = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.safetensors"


# ---------------------------------------------------------------------------------------------
# Optimizer state


def save_optimizer_state(model, optimizer, path: Path, *, betas, eps) -> None:
    """The AdamW state of the LoRA weights of ``model`` into ``path`` (same state, same bytes)."""
    import torch
    from safetensors.torch import save

    from mint._io import atomic_write_bytes
    from mint.model.modeling import lora_named_parameters

    tensors, step = {}, 0
    for key, p in lora_named_parameters(model):
        state = optimizer.state.get(p)
        if not state:
            raise MintError(f"no optimizer state for {key}; training made no step")
        tensors[f"{key}.exp_avg"] = state["exp_avg"].detach().float().cpu().contiguous()
        tensors[f"{key}.exp_avg_sq"] = state["exp_avg_sq"].detach().float().cpu().contiguous()
        step = int(float(state["step"]))  # a tensor in torch's AdamW, a number in older versions
        tensors[f"{key}.step"] = torch.tensor([float(step)], dtype=torch.float32)
    # One metadata key: safetensors writes its metadata map in no fixed order, and the same run
    # must give the same bytes.
    meta = {"mint_adamw": json.dumps({"format": 1, "betas": list(betas), "eps": float(eps), "step": step},
                                     sort_keys=True)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_optimizer_state(folder: str | os.PathLike) -> dict[str, Any]:
    """The AdamW state saved by `mint.model.train.train_lora` in ``folder``: ``{"exp_avg": {key:
    Tensor}, "exp_avg_sq": {key: Tensor}, "step": int, "betas": (b1, b2), "eps": float}``, keys as
    in the adapter file. Raises `MintError` when it is missing or does not match the adapter."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / OPTIMIZER_FILE
    if not path.is_file():
        raise MintError(f"{folder} holds no optimizer state ({OPTIMIZER_FILE} missing), which the 'adam' gradient "
                        "type needs; run `mint warmup` into a fresh folder (it saves the state) or use grad_type sgd")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    exp_avg = {k[: -len(".exp_avg")]: v for k, v in tensors.items() if k.endswith(".exp_avg")}
    exp_avg_sq = {k[: -len(".exp_avg_sq")]: v for k, v in tensors.items() if k.endswith(".exp_avg_sq")}
    adapter_file = folder / "adapter" / "adapter_model.safetensors"
    if adapter_file.is_file():
        with safe_open(str(adapter_file), framework="pt") as f:  # the names only, not the tensors
            adapter_keys = set(f.keys())
        if set(exp_avg) != adapter_keys or set(exp_avg_sq) != adapter_keys:
            raise MintError(f"{path} does not match the adapter in {folder / 'adapter'} (parameter names differ); "
                            "rerun `mint warmup` into a fresh folder")
    try:
        hyper = json.loads(meta["mint_adamw"])
        betas = tuple(float(b) for b in hyper["betas"])
        eps, step = float(hyper["eps"]), int(hyper["step"])
    except (KeyError, ValueError, TypeError) as e:
        raise MintError(f"{path}: optimizer metadata (betas, eps, step) missing or invalid; rerun `mint warmup`") from e
    return {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "step": step, "betas": betas, "eps": eps}


# ---------------------------------------------------------------------------------------------
# The Trainer's checkpoints


def resume_point(checkpoints, config: dict, resume: bool, *, rank: int, dist) -> str | None:
    """The Trainer checkpoint to continue from: the latest in ``checkpoints`` when it was made
    with this ``config`` (and ``resume``), else None after rank 0 cleared the folder and recorded
    ``config`` in it. Every rank gets the same answer."""
    import json
    import shutil
    from pathlib import Path

    from mint._io import atomic_write_json
    from mint.model.distributed import barrier

    checkpoints = Path(checkpoints)
    record = checkpoints / "mint_config.json"
    found = None
    if resume and record.is_file():
        try:
            same = json.loads(record.read_text()) == json.loads(json.dumps(config))
        except (OSError, ValueError):
            same = False
        done = sorted((p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
                      key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
        if same and done:
            found = str(done[-1])
        elif not same:
            log.info("checkpoints in %s belong to other settings; starting over", checkpoints)
    barrier(dist)  # every rank has looked
    if found is None and rank == 0:
        shutil.rmtree(checkpoints, ignore_errors=True)
        checkpoints.mkdir(parents=True)
        atomic_write_json(record, config)
    barrier(dist)
    return found


HISTORY_FILE = "mint_history.json"  # mint's per-step records, in each Trainer checkpoint


def history_of(checkpoint: str) -> list[dict]:
    """mint's per-step records up to a checkpoint."""
    import json
    from pathlib import Path

    path = Path(checkpoint) / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []
