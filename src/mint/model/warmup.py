"""Warm-up (docs/design.md section 2, step 1): a short LoRA training on a seeded random sample of the data,
unit weights, keeping the adapter and the AdamW state that the gradient features need.

It is `mint.model.train.train_lora` on ``sample_ratio`` of the records, drawn with
``numpy.random.default_rng(seed).choice(N, max(1, round(sample_ratio * N)), replace=False)``
(sorted), so the same seed picks the same sample.

Seeded streams: the warm-up sample uses ``SeedSequence(seed)`` itself (what
``default_rng(seed)`` does); the random-subset baseline (`random_subset_indices`, ``mint train
--random``, ``mint run``'s random baseline) uses ``SeedSequence(seed, spawn_key=(1,))``, an
independent stream, so a baseline of the warm-up's size is not the warm-up sample again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mint.errors import MintError

__all__ = ["warmup_indices", "random_subset_indices", "RANDOM_SUBSET_SPAWN_KEY", "run_warmup", "load_warmup_state"]

RANDOM_SUBSET_SPAWN_KEY = (1,)  # see the module docstring


def _check_ratio(ratio: float, name: str) -> None:
    if isinstance(ratio, bool) or not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise MintError(f"{name} must be a fraction in (0, 1], got {ratio!r}")


def _draw(n_records: int, ratio: float, seed_seq: np.random.SeedSequence) -> np.ndarray:
    k = max(1, int(round(ratio * n_records)))
    return np.sort(np.random.default_rng(seed_seq).choice(n_records, size=k, replace=False)).astype(np.int64)


def warmup_indices(n_records: int, sample_ratio: float, seed: int) -> np.ndarray:
    """The sorted record indices of the warm-up sample."""
    _check_ratio(sample_ratio, "sample_ratio")
    return _draw(n_records, sample_ratio, np.random.SeedSequence(seed))


def random_subset_indices(n_records: int, ratio: float, seed: int) -> np.ndarray:
    """The sorted record indices of a random-subset baseline of ``max(1, round(ratio * N))``
    records: a stream independent of the warm-up sample's (see the module docstring)."""
    _check_ratio(ratio, "ratio")
    return _draw(n_records, ratio, np.random.SeedSequence(seed, spawn_key=RANDOM_SUBSET_SPAWN_KEY))


def run_warmup(
    model: str | os.PathLike,
    data_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    sample_ratio: float = 0.05,
    epochs: float = 4.0,
    lr: float = 2e-5,
    seed: int = 0,
    **train_options: Any,
) -> Path:
    """Warm the LoRA adapter up on a random ``sample_ratio`` of ``data_path`` (defaults as in
    LESS: 5% of the data, 4 epochs, lr 2e-5); returns ``output_dir`` (see `mint.model.train` for its
    layout). Other keyword options (batch_size, grad_accum, lora, max_length, template, schema,
    long_prompts, device, dtype, overwrite, progress, ...) go to `mint.model.train.train_lora`."""
    from mint.model.train import train_lora

    _check_ratio(sample_ratio, "sample_ratio")  # before the model is loaded
    return train_lora(
        model, data_path, output_dir, indices=lambda n: warmup_indices(n, sample_ratio, seed), weights=None,
        weighting="none", epochs=epochs, lr=lr, seed=seed, kind="warmup", extra={"sample_ratio": sample_ratio},
        **train_options,
    )


def load_warmup_state(warmup_dir: str | os.PathLike) -> dict[str, Any]:
    """What the gradient step needs from a warm-up folder:

    ``{"adapter_dir": Path, "exp_avg": {key: Tensor}, "exp_avg_sq": {key: Tensor}, "betas": (b1, b2),
    "eps": float, "step": int, "manifest": dict}``, keys as in the adapter file (see
    `mint.model.modeling.lora_named_parameters`). Raises `MintError` when the folder is not a finished
    warm-up or has no optimizer state."""
    from mint.model.checkpoint import load_optimizer_state
    from mint.model.train import read_train_manifest

    warmup_dir = Path(warmup_dir)
    if not warmup_dir.is_dir():
        raise MintError(f"warm-up folder {warmup_dir} not found; run `mint warmup` first")
    manifest = read_train_manifest(warmup_dir)
    adapter_dir = warmup_dir / "adapter"
    if manifest is None or not (adapter_dir / "adapter_config.json").is_file():
        raise MintError(f"{warmup_dir} is not a finished warm-up (manifest.json or adapter/ missing); "
                        "run `mint warmup` into it again")
    state = load_optimizer_state(warmup_dir)
    return {"adapter_dir": adapter_dir, **state, "manifest": manifest}
