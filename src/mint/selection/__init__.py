"""The selection engine: numpy only. Arrays in, frozen results out; no paths, plots or printing.

- `mint.selection.distances`: block distances, the combined distance, E(T);
- `mint.selection.facility`: facility-location gains, naive and lazy greedy, weights;
- `mint.selection.alpha`: the alpha grid, plateau detection, golden-section search, the scan;
- `mint.selection.core`: `select_coreset`, which runs them for every ratio.

Importing this package loads neither torch, transformers, matplotlib nor `mint.pipeline`
(tests/selection/test_boundaries.py checks it).
"""
from __future__ import annotations

from mint.selection.core import SelectionResult, Subset, select_coreset

__all__ = ["select_coreset", "SelectionResult", "Subset"]
