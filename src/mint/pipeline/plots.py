"""The plots of a run, rendered to PNG bytes (the caller writes them atomically): the two of the
alpha search and the training-loss curves.

- Pareto: E_PT against E_IFL for every evaluated alpha, coloured by alpha, some points
  labelled, the chosen alpha starred.
- Plateau: E_IFL against alpha and, below, the |diff E_IFL| the plateau test used, with the
  sigma line and the chosen alpha. The alpha axis is `-log10(1 - alpha)` so the dense grid
  above 0.9 (where the choice is made) is readable.
- Training loss: the loss of every optimizer step (the Trainer's log history) of each trained
  model against epochs, so runs of different sizes share the axis.
"""
from __future__ import annotations

import io
import math

import numpy as np

from mint.selection.alpha import AlphaCurve

__all__ = ["pareto_png", "plateau_png", "training_loss_png", "loss_curve"]

_TICKS = [0.1, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, plt.subplots(*args, **kwargs)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    # no Software/date metadata, so the same curve gives the same bytes
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _ax_alpha(a):
    return -np.log10(1.0 - np.asarray(a, dtype=np.float64))


def _set_alpha_axis(ax, alphas):
    lo, hi = float(np.min(alphas)), float(np.max(alphas))
    ticks = [t for t in _TICKS if lo - 1e-9 <= t <= hi + 1e-9]
    ax.set_xticks(_ax_alpha(ticks))
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.set_xlabel("alpha  (axis stretched towards 1: -log10(1 - alpha))")


def _spread_labels(x, y, min_gap: float = 0.07, most: int = 14) -> list[int]:
    """Indices of points to label: walking the curve, a point gets a label only when it is at
    least `min_gap` (in axis-normalised units) from every labelled one, so labels never pile up
    where many alphas give the same subset."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    nx = (x - x.min()) / max(np.ptp(x), 1e-300)
    ny = (y - y.min()) / max(np.ptp(y), 1e-300)
    chosen: list[int] = []
    for i in range(len(x)):
        if all(math.hypot(nx[i] - nx[j], ny[i] - ny[j]) >= min_gap for j in chosen):
            chosen.append(i)
            if len(chosen) >= most:
                break
    return chosen


def pareto_png(curve: AlphaCurve, title: str = "") -> bytes:
    plt, (fig, ax) = _figure(figsize=(7, 5.5))
    sc = ax.scatter(curve.e_ifl, curve.e_pt, c=_ax_alpha(curve.alpha), cmap="viridis", s=16, zorder=2)
    ax.plot(curve.e_ifl, curve.e_pt, color="0.8", lw=0.8, zorder=1)
    cbar = fig.colorbar(sc, ax=ax)
    ticks = [t for t in _TICKS if curve.alpha.min() - 1e-9 <= t <= curve.alpha.max() + 1e-9]
    cbar.set_ticks(_ax_alpha(ticks))
    cbar.set_ticklabels([f"{t:g}" for t in ticks])
    cbar.set_label("alpha")
    # neighbouring alphas often select the same subset: one label per run of equal points,
    # naming the alpha range it covers
    starts = [0] + [i for i in range(1, len(curve.alpha))
                    if (curve.e_ifl[i], curve.e_pt[i]) != (curve.e_ifl[i - 1], curve.e_pt[i - 1])]
    ends = starts[1:] + [len(curve.alpha)]
    for g in _spread_labels(curve.e_ifl[starts], curve.e_pt[starts]):
        i, last = starts[g], ends[g] - 1
        text = f"{curve.alpha[i]:g}" if last == i else f"{curve.alpha[i]:g}-{curve.alpha[last]:g}"
        ax.annotate(text, (curve.e_ifl[i], curve.e_pt[i]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points", color="0.25")
    c = int(np.flatnonzero(curve.alpha == curve.chosen)[0]) if np.any(curve.alpha == curve.chosen) else None
    if c is not None:
        g = max(i for i, st in enumerate(starts) if st <= c)
        same = "" if ends[g] - starts[g] == 1 else \
            f"\n(same errors for alpha {curve.alpha[starts[g]]:g}-{curve.alpha[ends[g] - 1]:g})"
        ax.scatter([curve.e_ifl[c]], [curve.e_pt[c]], marker="*", s=220, color="crimson", zorder=3,
                   label=f"chosen alpha = {curve.chosen:g}{same}")
        ax.legend(loc="best")
    ax.set_xlabel("E_IFL on the pre-sample (instruction-following error)")
    ax.set_ylabel("E_PT on the pre-sample (knowledge error)")
    ax.set_title(title or f"Pareto front of the alpha {curve.method} search (n_pre={curve.n_pre}, k={curve.k_pre})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(plt, fig)


def plateau_png(curve: AlphaCurve, title: str = "") -> bytes:
    plt, (fig, (top, bottom)) = _figure(2, 1, figsize=(8, 7), sharex=True)
    golden = curve.method == "golden"
    # golden search points lie anywhere in (0, 1): a plain alpha axis reads best there
    ax_alpha = (lambda a: np.asarray(a, dtype=np.float64)) if golden else _ax_alpha
    x = ax_alpha(curve.alpha)
    if golden:
        top.plot(x, curve.e_ifl + curve.e_pt, "-s", ms=3, lw=1, label="E_PT + E_IFL (minimised)")
    else:
        top.plot(x, curve.e_ifl, "-o", ms=2.5, lw=1, label="E_IFL")
    top.set_ylabel("error on the pre-sample")
    top.axvline(ax_alpha(curve.chosen), color="crimson", ls="--", lw=1, label=f"chosen alpha = {curve.chosen:g}")
    top.legend(loc="best")
    top.grid(alpha=0.3)
    if curve.diffs is not None and len(curve.diffs):
        scaled = curve.method == "plateau_scaled"
        diffs = np.maximum(curve.diffs, 1e-12)  # log axis: draw exact zeros at the bottom
        bottom.semilogy(x[1:], diffs, "-o", ms=2.5, lw=1, color="tab:orange",
                        label=("|dE_IFL| / step" if scaled else "|dE_IFL|") + " (zeros drawn at 1e-12)")
        bottom.axhline(curve.sigma, color="0.3", ls=":", label=f"sigma = {curve.sigma:.3g}")
        if curve.plateau_starts is not None and len(curve.plateau_starts):
            s = np.asarray(curve.plateau_starts)
            bottom.scatter(x[s], np.maximum(curve.diffs[np.minimum(s, len(diffs) - 1)], 1e-12), s=14,
                           color="tab:green", zorder=3, label="plateau starts")
        bottom.set_ylabel("difference between grid points")
    else:
        bottom.plot(x, curve.e_pt, "-o", ms=3, lw=1, color="tab:orange", label="E_PT")
        bottom.plot(x, curve.e_ifl, "-o", ms=3, lw=1, color="tab:blue", label="E_IFL")
        bottom.set_ylabel("error on the pre-sample")
    bottom.axvline(ax_alpha(curve.chosen), color="crimson", ls="--", lw=1)
    bottom.legend(loc="best")
    bottom.grid(alpha=0.3)
    if golden:
        bottom.set_xlabel("alpha")
    else:
        _set_alpha_axis(bottom, curve.alpha)
    top.set_title(title or f"alpha choice ({curve.method}): {curve.reason}", fontsize=10)
    fig.tight_layout()
    return _png(plt, fig)


def loss_curve(manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, loss) of each optimizer step of a training run, from its manifest: the Trainer's
    ``log_history`` (the weighted loss it logged), else mint's own ``history`` (earlier runs)."""
    logged = [e for e in manifest.get("log_history") or [] if "loss" in e and "step" in e]
    rows = [(e["step"], e["loss"]) for e in logged] or [(h["step"], h["loss"]) for h in manifest.get("history") or []]
    n_steps = max(int(manifest.get("n_steps") or 0), max((s for s, _ in rows), default=1))
    epochs = float((manifest.get("config") or {}).get("epochs", 1.0))
    steps = np.array([s for s, _ in rows], dtype=np.float64)
    return steps / n_steps * epochs, np.array([loss for _, loss in rows], dtype=np.float64)


def training_loss_png(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = "") -> bytes:
    """One line per trained model (label -> (epochs, loss))."""
    plt, (fig, ax) = _figure(figsize=(7, 4.5))
    for label, (x, y) in curves.items():
        ax.plot(x, y, "-o" if len(x) <= 40 else "-", ms=2.5, lw=1.2, label=f"{label} ({len(x)} steps)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (weighted, per optimizer step)")
    ax.set_title(title or "Training loss")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="best")
    fig.tight_layout()
    return _png(plt, fig)
