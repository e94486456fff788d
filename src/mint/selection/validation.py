"""Checks of what a caller passes to `select_coreset`, before any work: the feature arrays
(shapes, kinds, finite rows), the ratios, and the settings. Every refusal is a `MintError` that
names the offending value and how to fix it."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from mint.choices import ALPHA_METHODS, METHODS
from mint.choices import FEATURE_KINDS as KINDS
from mint.choices import SELECTION_STRATEGIES as STRATEGIES
from mint.errors import MintError

__all__ = ["check_features", "check_ratios", "check_settings", "check_count", "check_strategy"]


def check_features(features: Mapping[str, np.ndarray], needed: Sequence[str], method: str) -> int:
    if not isinstance(features, Mapping):
        raise MintError("features must be a dict like {'sft': F_sft, 'pt': F_pt, 'ifl': F_ifl} of (N, D) arrays")
    unknown = [k for k in features if k not in KINDS]
    if unknown:
        raise MintError(f"unknown feature kind(s) {unknown}; expected keys among {list(KINDS)}")
    missing = [k for k in needed if k not in features or features[k] is None]
    if missing:
        raise MintError(
            f"method {method!r} needs feature kind(s) {missing} but only {sorted(k for k in features if features[k] is not None)} "
            "were given; compute them with `mint grads`, or choose a method that uses the kinds you have"
        )
    sizes = {}
    for kind, X in features.items():
        if X is None:
            continue
        shape = np.shape(X)
        if len(shape) != 2:
            raise MintError(f"features[{kind!r}] must be a 2-D (N, D) array, got shape {shape}")
        sizes[kind] = shape[0]
    if not sizes:
        raise MintError("no feature arrays given")
    if len(set(sizes.values())) > 1:
        raise MintError(f"feature arrays have different numbers of rows {sizes}; they must describe the same N examples")
    n = next(iter(sizes.values()))
    if n < 2:
        raise MintError(f"need at least 2 examples to select from, got N={n}")
    for kind, X in features.items():
        if X is None or (kind not in needed and kind not in ("pt", "ifl")):
            continue  # an unused kind (SFT for MINT) is never read, so it is not checked either
        bad = _nonfinite_rows(X)
        if len(bad):
            shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise MintError(
                f"features[{kind!r}] has {len(bad)} row(s) with NaN or inf values (rows {shown}); "
                "recompute those examples' gradients (a diverged warm-up is the usual cause) or drop them"
            )
    return n


def _nonfinite_rows(X, chunk: int = 4096) -> np.ndarray:
    bad = []
    for s in range(0, X.shape[0], chunk):
        ok = np.isfinite(np.asarray(X[s : s + chunk])).all(axis=1)
        bad.extend((np.flatnonzero(~ok) + s).tolist())
    return np.array(bad, dtype=np.int64)


def check_ratios(ratios) -> list[float]:
    if ratios is None or np.ndim(ratios) == 0:
        ratios = [ratios]
    out = []
    for r in ratios:
        try:
            r = float(r)
        except (TypeError, ValueError) as e:
            raise MintError(f"ratio {r!r} is not a number; give fractions of the dataset such as 0.05 0.1") from e
        if not (math.isfinite(r) and 0 < r <= 1):
            raise MintError(f"ratio {r} is outside (0, 1]; give fractions of the dataset such as 0.05 0.1 0.15")
        out.append(r)
    if not out:
        raise MintError("no ratios given; give at least one, e.g. ratios=[0.05]")
    return sorted(set(out))


def check_settings(method, alpha, alpha_method, coef, preheat_ratio, dtype):
    if method not in METHODS:
        raise MintError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if alpha_method not in ALPHA_METHODS:
        raise MintError(f"unknown alpha_method {alpha_method!r}; choose one of {', '.join(ALPHA_METHODS)}")
    if method != "mint" and (alpha is not None or coef is not None):
        raise MintError(f"alpha and coef apply only to method 'mint', not {method!r}; drop them or use method='mint'")
    if alpha is not None and coef is not None:
        raise MintError("give either alpha or coef, not both")
    if alpha is not None:
        try:
            a = float(alpha)
        except (TypeError, ValueError) as e:
            raise MintError(f"alpha {alpha!r} is not a number") from e
        if not (math.isfinite(a) and 0 < a < 1):
            raise MintError(
                f"alpha must lie strictly between 0 and 1, got {alpha}; leave it unset for the automatic search"
            )
    if coef is not None:
        try:
            c = tuple(float(x) for x in coef)
        except (TypeError, ValueError) as e:
            raise MintError(f"coef {coef!r} must be three numbers (c_sft, c_pt, c_ifl)") from e
        if len(c) != 3:
            raise MintError(f"coef must be three numbers (c_sft, c_pt, c_ifl), got {len(c)}")
        if any(not math.isfinite(x) or x < 0 for x in c):
            raise MintError(f"coefficients must be finite and >= 0, got {c}")
        if not any(c):
            raise MintError("coefficients are all 0; at least one of c_sft, c_pt, c_ifl must be positive")
    try:
        preheat_ok = 0 < float(preheat_ratio) <= 1
    except (TypeError, ValueError):
        preheat_ok = False
    if not preheat_ok:
        raise MintError(f"preheat_ratio must be in (0, 1], got {preheat_ratio!r}")
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise MintError(f"dtype must be float32 or float64, got {dtype!r}")


def check_count(value, name: str, minimum: int, why: str) -> int:
    """A whole-number setting (`preheat_max`, `partition_size`) of at least `minimum`."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < minimum:
        raise MintError(f"{name} must be a whole number >= {minimum}, got {value!r}: {why}")
    return int(value)


def check_strategy(strategy) -> str:
    if strategy not in STRATEGIES:
        raise MintError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy
