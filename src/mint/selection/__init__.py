"""The selection engine: numpy only. Arrays in, frozen results out; no paths, plots, printing,
or reading of the machine's state (the caller passes a memory limit). docs/design.md section 3.

- `mint.selection.distances`: block distances, the combined distance (`Combination.apply`),
  E(T) of every prefix of an order (`prefix_min_sums`);
- `mint.selection.facility`: `S = max(D) - D`, facility-location gains, naive and lazy greedy,
  weights;
- `mint.selection.alpha`: the alpha grid, plateau detection, golden-section search, the scan;
- `mint.selection.validation`, `mint.selection.memory`: what is checked before any work;
- `mint.selection.core`: `select_coreset`, which runs them in stages for every ratio.

Importing this package loads neither torch, transformers, matplotlib, `mint.model` nor
`mint.pipeline` (tests/selection/test_boundaries.py checks it).
"""
from __future__ import annotations

from mint.selection.core import SelectionResult, Subset, select_coreset

__all__ = ["select_coreset", "SelectionResult", "Subset"]
