"""mint-coreset: MINT, multi-constrained coreset selection for instruction tuning.

The top-level names are imported lazily so that `import mint` (and `mint --help`)
stays instant; heavy dependencies (torch, transformers) load only when used.
"""
from __future__ import annotations

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "select_coreset": "mint.selection",
    "SelectionResult": "mint.selection",
    "Subset": "mint.selection",
    "load_features": "mint.model.store",
    "compute_features": "mint.model.features",
    "run_warmup": "mint.model.warmup",
    "train_lora": "mint.model.train",
    "evaluate": "mint.model.evaluate",
    "export_coreset": "mint.pipeline.export",
    "load_config": "mint.pipeline.config",
    "run_pipeline": "mint.pipeline",
    "export_subset": "mint.pipeline.export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mint' has no attribute {name!r}")
