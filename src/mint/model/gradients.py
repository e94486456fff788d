"""Per-example gradient features of L_SFT and L_PT w.r.t. the LoRA weights (DESIGN section 2).

Batched, exact per-example gradients. A LoRA adapter is made of plain `nn.Linear` layers
(`lora_A`, `lora_B`), and the weight gradient of a linear layer `y = x W^T (+ b)` for one
example is `sum_t g_t^T x_t` over its tokens, where `x_t` is the layer input and `g_t` the
gradient of the loss w.r.t. the output. The loss of a batch is the *sum* of the per-example
response-token means, so the output gradients of row b are exactly those of example b alone
(rows never interact: right padding, attention masks, eval mode). `LoraGradCollector` records
`x` with a forward hook and `g` with a tensor hook on the layer output, and forms all B
per-example gradients with one einsum per layer after a single backward pass.

Features: for each example the SFT and PT gradients are preconditioned (`adam` with the
warm-up state, `sgd` = plain gradient, `sign`), then projected with one seeded matrix shared
by both kinds (`mint.model.projection`), so that the IFL feature, SFT minus PT, is formed after
preconditioning and commutes with the projection; the store computes it at merge time.

Work is split in fixed shards of examples (resumable, see `mint.model.store`); under `torchrun`
each rank computes a contiguous range of shards and rank 0 merges.
"""
from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from mint.errors import MintError

__all__ = ["GRAD_TYPES", "LoraGradCollector", "per_example_grads", "Preconditioner", "compute_features"]

log = logging.getLogger(__name__)

GRAD_TYPES = ("adam", "sgd", "sign")
# Test hook: kill this process (SIGKILL, no clean-up) right after shard k is written, to
# check that an interrupted run resumes to the same bytes. Never set it in real use.
_CRASH_ENV = "MINT_TEST_CRASH_AFTER_SHARD"


class LoraGradCollector:
    """Per-example gradients of the trainable parameters of `model`, all of which must be
    weights or biases of `nn.Linear` layers (true of LoRA adapters). Parameters are laid out
    in `self.names` order, each flattened row-major, as in `torch.cat([p.flatten() ...])`."""

    def __init__(self, model):
        modules = dict(model.named_modules())
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not params:
            raise MintError("the model has no trainable parameters; load the LoRA adapter with trainable=True")
        self.names, self.shapes = [], []
        self._owners: dict[str, torch.nn.Module] = {}
        for name, p in params:
            owner_name, _, leaf = name.rpartition(".")
            owner = modules.get(owner_name)
            if type(owner) is not torch.nn.Linear or leaf not in ("weight", "bias"):
                raise MintError(f"trainable parameter {name} is not the weight of a plain Linear layer; "
                                "per-example gradients support LoRA adapters (no DoRA, no embedding LoRA)")
            self.names.append(name)
            self.shapes.append(tuple(p.shape))
            self._owners[owner_name] = owner
        self.grad_dim = sum(math.prod(s) for s in self.shapes)
        self._records: dict[str, list] = {}

    @contextmanager
    def capture(self):
        """Inside the block, forward+backward passes record inputs and output gradients."""
        self._records = {name: [] for name in self._owners}
        handles = []

        def make_hook(owner_name):
            def hook(module, inputs, output):
                entry = [inputs[0].detach(), None]
                self._records[owner_name].append(entry)

                def grad_hook(grad):
                    entry[1] = grad.detach()
                output.register_hook(grad_hook)
            return hook

        for owner_name, owner in self._owners.items():
            handles.append(owner.register_forward_hook(make_hook(owner_name)))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def per_example(self, batch_size: int) -> torch.Tensor:
        """(B, grad_dim) float32 from the passes recorded since `capture` began."""
        pieces = []
        for name in self.names:
            owner_name, _, leaf = name.rpartition(".")
            total = None
            for x, g in self._records[owner_name]:
                if g is None:
                    raise RuntimeError(f"no gradient reached {owner_name}; call backward() inside capture()")
                x, g = x.float(), g.float()
                if x.ndim == 2:  # (B, features) inputs without a token axis
                    x, g = x[:, None], g[:, None]
                part = torch.einsum("bto,bti->boi", g, x) if leaf == "weight" else g.sum(dim=1)
                total = part if total is None else total + part
            pieces.append(total.reshape(batch_size, -1))
        self._records = {}
        return torch.cat(pieces, dim=1)


def per_example_grads(model, batch: dict, collector: LoraGradCollector) -> torch.Tensor:
    """(B, grad_dim) gradients of each example's response-token mean loss, one backward pass."""
    from mint.model.modeling import response_token_losses

    model.zero_grad(set_to_none=True)
    with collector.capture():
        losses = response_token_losses(model, batch)
        losses.sum().backward()
        grads = collector.per_example(losses.shape[0])
    model.zero_grad(set_to_none=True)  # .grad accumulation is not used; free it
    return grads


class Preconditioner:
    """`adam`: m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2, feature m' / (sqrt(v') + eps) with the
    warm-up AdamW state (flattened in the collector's parameter order); `sgd`: g; `sign`: sign(g)."""

    def __init__(self, grad_type: str, *, exp_avg=None, exp_avg_sq=None, betas=(0.9, 0.999), eps=1e-8,
                 device="cpu"):
        if grad_type not in GRAD_TYPES:
            raise MintError(f"unknown grad_type {grad_type!r}; use one of {', '.join(GRAD_TYPES)}")
        self.grad_type = grad_type
        if grad_type == "adam":
            if exp_avg is None or exp_avg_sq is None:
                raise MintError("grad_type 'adam' needs the warm-up optimizer state (exp_avg, exp_avg_sq)")
            self.m = torch.as_tensor(exp_avg, dtype=torch.float32, device=device)
            self.v = torch.as_tensor(exp_avg_sq, dtype=torch.float32, device=device)
            self.b1, self.b2 = float(betas[0]), float(betas[1])
            self.eps = float(eps)

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        if self.grad_type == "sgd":
            return g
        if self.grad_type == "sign":
            return torch.sign(g)
        m = self.b1 * self.m + (1 - self.b1) * g
        v = self.b2 * self.v + (1 - self.b2) * g * g
        return m / (torch.sqrt(v) + self.eps)


def _check_finite(grads: torch.Tensor, indices, view: str) -> None:
    bad = ~torch.isfinite(grads).all(dim=1)
    if bad.any():
        rows = [int(indices[i]) for i in torch.nonzero(bad).flatten().tolist()]
        raise MintError(f"the {view.upper()} gradient of record(s) {rows[:10]} has NaN/inf values "
                        "(diverged warm-up adapter, or a bad record); fix or remove the record and run again. "
                        "Completed shards are kept; the store was not modified for this shard.")


def shard_features(model, tokenized, *, collector, preconditioner, projector, batch_size: int,
                   pad_id: int, bos_id: int, on_batch=None) -> dict[str, np.ndarray]:
    """{"sft_<dim>", "pt_<dim>"} (m, D) float32 features of the examples `tokenized` (one shard).

    Each view is batched over the shard's examples sorted by that view's length (less
    padding); the batches depend only on the shard, so a resumed run makes the same batches
    and the same bytes. `on_batch(k)` is called with the examples done (half per view)."""
    from mint.model.data import collate

    m = len(tokenized)
    lengths = {"sft": lambda t: len(t.prompt_ids) + len(t.response_ids), "pt": lambda t: len(t.response_ids)}
    device = next(model.parameters()).device
    # SFT rows in [0, m), PT rows in [m, 2m): one projection call for the whole shard, so
    # each projection tile is generated once per shard.
    feats = torch.empty(2 * m, collector.grad_dim, dtype=torch.float32, device=device)
    for view, offset in (("sft", 0), ("pt", m)):
        order = sorted(range(m), key=lambda i: (lengths[view](tokenized[i]), i))
        for start in range(0, m, batch_size):
            pos = order[start:start + batch_size]
            chunk = [tokenized[i] for i in pos]
            grads = per_example_grads(model, collate(chunk, view, pad_id=pad_id, bos_id=bos_id), collector)
            _check_finite(grads, [t.index for t in chunk], view)
            feats[torch.tensor(pos, device=device) + offset] = preconditioner(grads)
            if on_batch is not None:
                on_batch(len(chunk) / 2)
    projected = projector.project(feats)
    out = {}
    for key, arr in projected.items():
        arr = arr.cpu().numpy()
        out[f"sft_{key}"] = np.ascontiguousarray(arr[:m])
        out[f"pt_{key}"] = np.ascontiguousarray(arr[m:])
    return out


# ---------------------------------------------------------------------------------------------
# The whole step: data + model + warm-up adapter -> feature store


def _distributed():
    """(rank, world_size, torch.distributed or None); initialises the process group when the
    process was started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import datetime

    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # ranks wait for each other at the merge; shards can take hours on big data sets
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size(), dist


def _adapter_dir(warmup_dir: Path) -> Path:
    for candidate in (warmup_dir / "adapter", warmup_dir):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise MintError(f"{warmup_dir} holds no LoRA adapter (no adapter_config.json in it or in adapter/); "
                    "pass the output folder of `mint warmup`")


def _adapter_hash(adapter_dir: Path) -> str:
    from mint._io import sha256_file

    files = sorted(adapter_dir.glob("adapter_model.*"))
    if not files:
        raise MintError(f"{adapter_dir} has no adapter_model.safetensors/.bin; the warm-up did not finish")
    return sha256_file(files[0])


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


def compute_features(model_name_or_dir, data_path, warmup_dir, output_dir, *, proj_dim=8192,
                     grad_type: str = "adam", batch_size: int = 8, max_length: int = 512, seed: int = 0,
                     template: str = "auto", schema: str = "auto", long_prompts: str = "error",
                     projection: str = "rademacher",
                     shard_size: int = 64, device: str = "auto", cache_bytes: int = 1 << 30,
                     overwrite: bool = False, progress: bool = True) -> Path:
    """Gradient features (SFT, PT, IFL) of every example of `data_path` into the store
    `output_dir` (see `mint.model.store`); returns `output_dir`. Resumes an interrupted run.

    proj_dim: an int, a list of ints (all from one pass), or None for raw gradients.
    grad_type: adam (warm-up AdamW state, DESIGN section 2), sgd or sign.
    batch_size: examples per forward/backward pass (results do not depend on it beyond float
    rounding). long_prompts: `error` or `truncate` for prompts that alone fill max_length (see
    `mint.model.data.tokenize_examples`). shard_size: examples per resumable shard, also the number
    projected together (2 * shard_size rows per projection call; a constant of the store, since
    it fixes the batches). cache_bytes: memory for cached projection tiles. overwrite: replace a
    store made with other settings (its partial progress is lost).
    Under `torchrun`, each rank computes a contiguous range of shards and rank 0 merges."""
    from mint._io import sha256_file
    from mint.model.data import collate_ids, dataset_fingerprint, load_examples, tokenize_examples
    from mint.model.modeling import lora_named_parameters, load_lora, load_model_and_tokenizer
    from mint.model.projection import make_projector
    from mint.model.store import FeatureStore
    from mint.model.warmup import load_warmup_state

    if grad_type not in GRAD_TYPES:
        raise MintError(f"unknown grad_type {grad_type!r}; use one of {', '.join(GRAD_TYPES)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MintError(f"batch_size must be a positive integer, got {batch_size!r}")
    data_path, warmup_dir, output_dir = Path(data_path), Path(warmup_dir), Path(output_dir)
    if not data_path.is_file():
        raise MintError(f"data file {data_path} not found")
    rank, world, dist = _distributed()
    if device == "auto" and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)

    examples = load_examples(data_path, schema=schema)
    adapter_dir = _adapter_dir(warmup_dir)
    # the warm-up folder is checked before the (possibly large) model loads
    warm_state = load_warmup_state(warmup_dir) if grad_type == "adam" else None
    model, tokenizer = load_model_and_tokenizer(model_name_or_dir, device=device)
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

    # the same rendering settings as mint.model.train, so warm-up, features and training share a fingerprint
    render = {"schema": examples[0].schema, "template": template, "max_length": max_length,
              "long_prompts": long_prompts}
    projector = make_projector(collector.grad_dim, proj_dim, seed, kind=projection, device=model_device,
                               cache_bytes=cache_bytes)
    settings = {
        "data_fingerprint": dataset_fingerprint(data_path, render),
        "data_sha256": sha256_file(data_path),
        "render": render,
        "model": str(model_name_or_dir),
        "adapter_hash": _adapter_hash(adapter_dir),
        "grad_type": grad_type,
        "optimizer": {k: optimizer[k] for k in ("betas", "eps", "step")} if optimizer else None,
        "projection": projector.describe(),
        "proj_dims": list(projector.keys),
        "seed": seed,
        "param_keys_sha256": _keys_hash(keys),
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    info = {"data_path": str(data_path), "warmup_dir": str(warmup_dir), "batch_size": batch_size,
            "world_size": world, "device": str(model_device), "grad_dim": collector.grad_dim}
    store = FeatureStore(output_dir, n=len(examples), dims=list(projector.keys), shard_size=shard_size,
                         settings=settings, info=info)
    if store.is_complete() and not overwrite:
        store.prepare()  # refuses a complete store made with other settings
        log.info("%s already holds complete features for these settings; nothing to do", output_dir)
        return output_dir
    # after that check (a finished store needs no tokens), before anything is written (a bad record stops here)
    tokenized = tokenize_examples(examples, tokenizer, max_length=max_length, template=template,
                                  long_prompts=long_prompts, progress=progress and rank == 0)
    if rank == 0:
        _warn_on_changes(output_dir, info, settings, warmup_dir, overwrite)
        store.prepare(overwrite=overwrite)
    if dist is not None:
        dist.barrier()

    mine = range(rank * store.num_shards // world, (rank + 1) * store.num_shards // world)
    todo = [k for k in mine if not store.shard_done(k)]
    n_todo = sum(store.shard_range(k)[1] - store.shard_range(k)[0] for k in todo)
    if len(todo) < len(mine):
        log.info("rank %d: resuming, %d of %d shards already done", rank, len(mine) - len(todo), len(mine))
    from tqdm.auto import tqdm

    ids = collate_ids(tokenizer)
    started = time.perf_counter()
    # counts advance by half an example per view; show whole examples
    fmt = "{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"
    with tqdm(total=n_todo, unit="ex", desc=f"grads[{rank}]" if world > 1 else "grads", bar_format=fmt,
              disable=not progress or rank != 0) as bar:
        for k in todo:
            start, end = store.shard_range(k)
            rows = shard_features(model, tokenized[start:end], collector=collector, preconditioner=preconditioner,
                                  projector=projector, batch_size=batch_size, on_batch=bar.update, **ids)
            store.write_shard(k, rows)
            if os.environ.get(_CRASH_ENV) == str(k):
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
    elapsed = time.perf_counter() - started
    if dist is not None:
        dist.barrier()
    if rank == 0:
        store.merge(progress=progress)
    if dist is not None:
        dist.barrier()
    rate = n_todo / elapsed if elapsed > 0 else float("nan")
    log.info("rank %d: %d examples in %.1f s (%.2f examples/s), grad_dim %d, grad_type %s, dims %s",
             rank, n_todo, elapsed, rate, collector.grad_dim, grad_type, ", ".join(map(str, projector.keys)))
    if rank == 0:
        log.info("features of %d examples (sft, pt, ifl; raw and normalised) written to %s", len(tokenized), output_dir)
    return output_dir


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
