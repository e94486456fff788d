"""`kind="trak"`: trak's CudaProjector (the `fast_jl` CUDA kernel, which draws the Rademacher
matrix inside the kernel and never stores it; LESS uses it) when it can run, else mint's own
Rademacher tiles (`mint.model.projection.BlockProjector`).

Whether it can run is decided once, at the start of the feature step, and logged: it needs a
CUDA device, the optional extra (`pip install 'mint-coreset[trak]'`, i.e. `traker[fast]`, which
compiles `fast_jl`) and dimensions that are multiples of 512 (the kernel's block). Otherwise
the step falls back to the tiles with a warning saying why. The two give different matrices,
so the projector's description (and so the store manifest) says which one made the features:
`{"type": "trak", ...}` or the tiles' `{"type": "rademacher", ...}`; a store is never resumed
with the other.
"""
from __future__ import annotations

import importlib
import logging
import math

import torch

__all__ = ["TrakProjector", "trak_or_dense", "why_not_trak", "TRAK_INSTALL"]

log = logging.getLogger(__name__)

TRAK_INSTALL = "pip install 'mint-coreset[trak]' (traker[fast], which builds fast_jl against your CUDA)"
TRAK_BLOCK = 512  # fast_jl projects to multiples of this


def why_not_trak(device, dims, importer=importlib.import_module) -> str | None:
    """Why trak's CudaProjector cannot project to `dims` on `device` (None when it can)."""
    if torch.device(device).type != "cuda":
        return f"trak's kernel needs a CUDA device, the gradients are on {device}"
    bad = [d for d in dims if d % TRAK_BLOCK]
    if bad:
        return f"trak's kernel projects to multiples of {TRAK_BLOCK}; proj_dim {bad[0]} is not one"
    for module in ("trak.projectors", "fast_jl"):
        try:
            importer(module)
        except ImportError as e:
            return f"{module} cannot be imported ({e}); install it with {TRAK_INSTALL}"
    return None


class TrakProjector:
    """trak's CudaProjector behind mint's projector interface: one (seeded) matrix per
    dimension, scaled by 1 / sqrt(dim) like the tiles, float32 out."""

    def __init__(self, grad_dim: int, dims, seed: int, *, device, max_batch_size: int = 32):
        from trak.projectors import CudaProjector, ProjectionType

        self.grad_dim, self.dims, self.seed = int(grad_dim), sorted({int(d) for d in dims}), int(seed)
        self.device = torch.device(device)
        self._projectors = {d: CudaProjector(self.grad_dim, d, self.seed, ProjectionType.rademacher, self.device,
                                             max_batch_size) for d in self.dims}

    @property
    def keys(self) -> tuple:
        return tuple(self.dims)

    def describe(self) -> dict:
        import fast_jl

        return {"type": "trak", "grad_dim": self.grad_dim, "proj_dims": self.dims, "seed": self.seed,
                "fast_jl": getattr(fast_jl, "__version__", "unknown")}

    @torch.no_grad()
    def project(self, x: torch.Tensor) -> dict:
        x = x.to(self.device, torch.float32).contiguous()
        return {d: p.project(x, model_id=0).float() / math.sqrt(d) for d, p in self._projectors.items()}


def trak_or_dense(grad_dim: int, dims, seed: int, *, device, cache_bytes: int, importer=importlib.import_module):
    """TrakProjector when `why_not_trak` finds nothing against it, else the Rademacher tiles."""
    from mint.model.projection import BlockProjector

    reason = why_not_trak(device, dims, importer)
    if reason is None:
        log.info("projection trak: trak's CudaProjector (fast_jl) on %s", device)
        return TrakProjector(grad_dim, dims, seed, device=device)
    log.warning("projection trak is not available (%s); using mint's rademacher tiles instead (the store manifest "
                "records which projection made the features)", reason)
    return BlockProjector(grad_dim, dims, seed, kind="rademacher", device=device, cache_bytes=cache_bytes)
