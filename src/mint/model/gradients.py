"""Per-example gradient features of L_SFT and L_PT w.r.t. the LoRA weights (docs/design.md section 2).

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

`shard_features` computes one shard; the step around it (model and warm-up loading, the
resumable store, torchrun) is `mint.model.features.compute_features`.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from mint.choices import GRAD_TYPES
from mint.errors import MintError

__all__ = ["GRAD_TYPES", "LoraGradCollector", "per_example_grads", "Preconditioner", "shard_features"]


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
        # values the hooks record per token: each layer's input and output gradient (the memory estimate)
        self.io_width = sum(m.in_features + m.out_features for m in self._owners.values())
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
        # m' = b1 m + (1-b1) g and v' = b2 v + (1-b2) g g, in place: two rows of work per gradient
        # row, not five. The same float operations in the same order as the plain expressions
        # (an addition's operands commute exactly), so the same bytes.
        m = (1 - self.b1) * g
        m.add_(self.b1 * self.m)
        v = (1 - self.b2) * g
        v.mul_(g).add_(self.b2 * self.v)
        return m.div_(v.sqrt_().add_(self.eps))


def _check_finite(grads: torch.Tensor, indices, view: str) -> None:
    bad = ~torch.isfinite(grads).all(dim=1)
    if bad.any():
        rows = [int(indices[i]) for i in torch.nonzero(bad).flatten().tolist()]
        raise MintError(f"the {view.upper()} gradient of record(s) {rows[:10]} has NaN/inf values "
                        "(diverged warm-up adapter, or a bad record); fix or remove the record and run again. "
                        "Completed shards are kept; the store was not modified for this shard.")


def shard_features(model, tokenized, *, collector, preconditioner, projector, batch_size: int,
                   pad_id: int, bos_id: int, buffer_rows: int | None = None, on_batch=None) -> dict[str, np.ndarray]:
    """{"sft_<dim>", "pt_<dim>"} (m, D) float32 features of the examples `tokenized` (one shard).

    Each view is batched over the shard's examples sorted by that view's length (less
    padding); the batches depend only on the shard, so a resumed run makes the same batches
    and the same bytes. `on_batch(k)` is called with the examples done (half per view).

    Streaming: the preconditioned rows wait in a buffer of `buffer_rows` rows (at least one
    batch) and are projected whenever the next batch would not fit, so memory is bounded by
    the buffer, never by the shard. `None` (or room for the whole shard): every row of the
    shard in one projection call, SFT rows then PT rows in example order, as before streaming
    (the same bytes at any thread count). With another `buffer_rows` the dense projections'
    rows agree to float rounding (BLAS may pick kernels by the row count; see
    `mint.model.projection`) and sjlt's are the same bytes."""
    from mint.model.data import collate

    m = len(tokenized)
    lengths = {"sft": lambda t: t.sft_length, "pt": lambda t: len(t.response_ids)}
    device = next(model.parameters()).device
    whole = buffer_rows is None or buffer_rows >= 2 * m
    buffer = _RowBuffer(projector, 2 * m if whole else max(buffer_rows, batch_size), collector.grad_dim, device,
                        n_out=2 * m, in_place=whole)
    for view, offset in (("sft", 0), ("pt", m)):
        order = sorted(range(m), key=lambda i: (lengths[view](tokenized[i]), i))
        for start in range(0, m, batch_size):
            pos = order[start:start + batch_size]
            chunk = [tokenized[i] for i in pos]
            grads = per_example_grads(model, collate(chunk, view, pad_id=pad_id, bos_id=bos_id), collector)
            _check_finite(grads, [t.index for t in chunk], view)
            features = preconditioner(grads)
            del grads
            buffer.add(features, [p + offset for p in pos])  # SFT rows [0, m), PT rows [m, 2m)
            del features
            if on_batch is not None:
                on_batch(len(chunk) / 2)
    out = buffer.finish()
    return {f"{view}_{key}": np.ascontiguousarray(arr[lo:hi]) for key, arr in out.items()
            for view, lo, hi in (("sft", 0, m), ("pt", m, 2 * m))}


class _RowBuffer:
    """Feature rows waiting for the projector, and the projected rows of the shard (on the CPU).

    `in_place`: buffer row i is output row i, and the whole buffer is projected once at the end."""

    def __init__(self, projector, capacity: int, grad_dim: int, device, *, n_out: int, in_place: bool):
        self.projector, self.capacity, self.n_out, self.in_place = projector, capacity, n_out, in_place
        self.rows = torch.empty(capacity, grad_dim, dtype=torch.float32, device=device)
        self.count = 0
        self.dest: list[int] = []  # output row of each buffered row (streaming)
        self.out: dict = {}

    def add(self, features: torch.Tensor, dest: list[int]) -> None:
        if self.in_place:
            self.rows[torch.tensor(dest, device=self.rows.device)] = features
        else:
            if self.count + len(dest) > self.capacity:
                self.flush()
            self.rows[self.count:self.count + len(dest)] = features
            self.dest.extend(dest)
        self.count += len(dest)

    def flush(self) -> None:
        if not self.count:
            return
        projected = self.projector.project(self.rows[:self.count])
        dest = np.arange(self.n_out) if self.in_place else np.asarray(self.dest)
        for key, arr in projected.items():
            if key not in self.out:
                self.out[key] = np.empty((self.n_out, arr.shape[1]), dtype=np.float32)
            self.out[key][dest] = arr.cpu().numpy()
        self.count, self.dest = 0, []

    def finish(self) -> dict:
        self.flush()
        return self.out
