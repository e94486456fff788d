"""The peak memory of the gradient-feature step, estimated before it starts (docs/design.md,
"Gradient features at 7-8B scale"), and the refusal when it cannot fit.

`estimate_feature_memory` is a pure function of the model's shape and the step's settings; it
counts what the step holds at its peak, on the device of the gradients:

- the model weights (model dtype) and the LoRA weights with their .grad (float32: peft keeps
  adapters in float32);
- the warm-up AdamW state `m`, `v` (float32, `grad_type adam` only);
- the per-example gradients of one micro-batch: the gradient rows `g` and the preconditioner's
  `m'` and `v'` (3 x batch_size x grad_dim float32), the peak of `mint.model.gradients`;
- the rows waiting for the projection (`buffer_rows` x grad_dim float32);
- the activations of one forward + backward pass: about (10 h + 4 I) values per token and
  layer in the model dtype (SDPA attention, no T^2 term), plus the LoRA hooks' float32 inputs
  and output gradients ((in + out + 2 r) per token and adapted layer);
- the logits: in the model dtype, the float32 copy, its log-softmax and gradient (V per
  position that gets logits: every position of a full batch, or, through the response-only
  output head, only the labelled ones, `logit_tokens`);
- the projection: the dense tiles or sparse hashes cached (up to cache_bytes) and one in use,
  and its output rows.

It is an estimate (the activation term is a rule of thumb, good to about 30%); bench/gpu_check.py
compares it with the measured peak on a GPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mint.errors import MintError

__all__ = ["ModelShape", "FeatureMemory", "estimate_feature_memory", "check_feature_memory"]

GIB = 1 << 30


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know of the base model and its adapter."""

    n_params: int  # base model parameters (embeddings included)
    param_bytes: int  # bytes per weight: 4 (float32), 2 (bfloat16, float16)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    grad_dim: int  # LoRA parameters: the length of one gradient row
    lora_io: int  # sum over the adapted layers of (in + out + 2 r): what the hooks record per token


@dataclass(frozen=True)
class FeatureMemory:
    """Bytes per part at the step's peak, and their total."""

    parts: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        rows = ", ".join(f"{name} {nbytes / GIB:.2f}" for name, nbytes in self.parts.items())
        return f"{self.total / GIB:.2f} GiB ({rows})"


def estimate_feature_memory(shape: ModelShape, *, batch_size: int, max_length: int, grad_type: str = "adam",
                            projection: str = "rademacher", proj_dims=(8192,), cache_bytes: int = 1 << 30,
                            buffer_rows: int = 8, sjlt_s: int = 2, tile_bytes: int | None = None,
                            logit_tokens: int | None = None) -> FeatureMemory:
    """The peak bytes of `mint.model.features.compute_features` (module docstring). tile_bytes:
    one dense tile (the CPU's numpy tile by default; `DEVICE_TILE_ROWS x DEVICE_TILE_COLS` floats
    for tiles drawn on a GPU). logit_tokens: the most positions of one micro-batch that get
    output-head logits (the labelled ones, for a model with `logits_to_keep`); None: every
    position, `batch_size x max_length`, the bound when nothing is known of the data."""
    from mint.model.projection import TILE_COLS, TILE_ROWS
    from mint.model.sjlt import CHUNK

    g, tokens, f4 = shape.grad_dim, batch_size * max_length, 4
    logit_tokens = tokens if logit_tokens is None else min(int(logit_tokens), tokens)
    dims = [] if proj_dims is None else [int(d) for d in ([proj_dims] if isinstance(proj_dims, int) else proj_dims)]
    rows = max(buffer_rows, 2)
    if not dims:
        projector = 0
    elif projection == "sjlt":
        hashes = g * sjlt_s * 4 * len(dims)
        projector = min(cache_bytes, hashes) + sjlt_s * CHUNK * 4 + rows * 2 * sum(dims) * f4
    else:  # dense tiles (trak's kernel holds less: no tiles)
        tiles = g * max(dims) * f4 if projection != "trak" else 0
        tile = TILE_ROWS * TILE_COLS * f4 if tile_bytes is None else tile_bytes
        projector = min(cache_bytes, tiles) + (tile if projection != "trak" else 0) + rows * max(dims) * f4
    parts = {
        "weights": shape.n_params * shape.param_bytes,
        "lora": 2 * g * f4,
        "adam_state": 2 * g * f4 if grad_type == "adam" else 0,
        "gradients": 3 * batch_size * g * f4,
        "row_buffer": (buffer_rows * g * f4) if dims else 0,
        "activations": tokens * shape.num_layers * (10 * shape.hidden_size + 4 * shape.intermediate_size)
        * shape.param_bytes + tokens * shape.lora_io * f4,
        "logits": logit_tokens * shape.vocab_size * (shape.param_bytes + 3 * f4),
        "projection": projector,
    }
    return FeatureMemory(parts)


def check_feature_memory(estimate: FeatureMemory, *, available: int | None, allocated: int = 0, where: str,
                         batch_size: int = 1, at_batch=None) -> None:
    """Refuse when the estimate minus what is already `allocated` (the loaded model) exceeds
    `available` (None: unknown, no check). `at_batch(b)`: the estimate at batch size b, to name
    the largest batch size below `batch_size` that fits."""
    if available is None:
        return
    if estimate.total - allocated <= available:
        return
    detail = f"the feature step needs about {estimate.describe()}; {available / GIB:.2f} GiB are free on {where}"
    if at_batch is not None:
        for b in range(batch_size - 1, 0, -1):
            if at_batch(b).total - allocated <= available:
                raise MintError(f"{detail}. Lower grads.batch_size to {b} (or less); results do not depend on it "
                                "beyond float rounding")
    raise MintError(f"{detail}, even at grads.batch_size 1. Lower lora.r (or target fewer modules: the gradient "
                    "rows and the optimizer state grow with it), lower grads.cache_mb and grads.buffer_mb, shorten "
                    "data.max_length, or use a device with more memory")

