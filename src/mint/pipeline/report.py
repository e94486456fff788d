"""The end of a `mint run`: `report.md` (for people) and `summary.json` (for scripts).

Both are rebuilt from the run folder's records on every invocation, so they always describe
the current state of the run, including steps that were skipped because they were up to date.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from mint._io import atomic_write_json, atomic_write_text, read_json

__all__ = ["write_report", "short_summary"]

log = logging.getLogger(__name__)

MODEL_ROWS = ("base", "coreset", "random", "full")
_ROW_NAMES = {"base": "base model (no adapter)", "coreset": "MINT coreset", "random": "random subset (same size)",
              "full": "full data"}


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _selection_summary(select_dir: Path) -> dict:
    path = select_dir / "summary.json"
    return read_json(path) if path.is_file() else {}


def _subset_rows(summary: dict) -> list[dict]:
    """(ratio, k, E_PT, E_IFL) per ratio from the selection summary, whatever its exact layout."""
    subsets = summary.get("subsets") or summary.get("ratios") or {}
    rows = []
    if isinstance(subsets, dict):
        items = subsets.items()
    elif isinstance(subsets, list):
        items = [(s.get("ratio"), s) for s in subsets if isinstance(s, dict)]
    else:
        items = []
    for ratio, s in items:
        if not isinstance(s, dict):
            continue
        rows.append({"ratio": float(s.get("ratio", ratio)), "k": s.get("k"), "e_pt": s.get("e_pt"),
                     "e_ifl": s.get("e_ifl")})
    return sorted(rows, key=lambda r: r["ratio"])


def _rel(path: Path, run_dir: Path) -> str:
    return os.path.relpath(path, run_dir).replace(os.sep, "/")


def _held_out(cfg, eval_path: Path | None, run_dir: Path) -> str:
    if eval_path is None:
        return "none (evaluation skipped; set data.eval)"
    if cfg.data.train is None:
        return f"the demo's held-out split `{_rel(eval_path, run_dir)}`"
    return f"`{cfg.data.eval}`"


def write_report(run_dir: Path, cfg, infos: dict, metrics: dict[str, dict], *, select_dir: Path,
                 n_records: int, train_ratio: float, k: int, eval_path: Path | None,
                 wall_seconds: float, log_file: str | os.PathLike | None = None) -> Path:
    """Write `report.md` and `summary.json` into `run_dir`; returns the report's path. `log_file`:
    the log of this invocation, linked from the report."""
    sel = _selection_summary(select_dir)
    rows = _subset_rows(sel)
    lines = [
        "# MINT run report", "",
        *([f"- model: `{cfg.model.name}`"] if not cfg.model.proxy else
          [f"- selected with `{cfg.model.proxy}` (the proxy: warm-up and gradient features)",
           f"- trained and evaluated: `{cfg.model.name}`"]),
        f"- training data: {'built-in demo data' if cfg.data.train is None else '`' + str(cfg.data.train) + '`'}"
        f" ({n_records} examples)",
        f"- held-out data: {_held_out(cfg, eval_path, run_dir)}",
        f"- config: [config.yaml](config.yaml) (rerun: `mint run --config {run_dir / 'config.yaml'}`)",
        f"- written {time.strftime('%Y-%m-%d %H:%M:%S')}; this invocation took {wall_seconds:.1f} s", "",
    ]
    if log_file is not None:
        rel = _rel(Path(log_file), run_dir)
        lines[-1:-1] = [f"- log of this invocation: [{rel}]({rel}) (earlier ones are beside it)"]
    lines += _selection_section(run_dir, cfg, infos, sel, rows, select_dir)
    lines += ["", "## Training", "",
              f"- coreset ratio {train_ratio:.2f}: {k} of {n_records} examples, weighting `{cfg.train.weighting}`, "
              f"epochs {cfg.train.epochs:g}, lr {cfg.train.lr:g}, LoRA r={cfg.lora.r}"]
    if "random" in metrics or "train_random" in infos:
        lines.append(f"- random baseline: {k} examples drawn uniformly (seed {cfg.seed}), unit weights")
    if "full" in metrics or "train_full" in infos:
        lines.append(f"- full-data baseline: all {n_records} examples, unit weights")
    lines += _loss_curve_section(run_dir, infos)
    if metrics:
        lines += _evaluation_section(metrics)
    lines += _time_section(infos)
    report = atomic_write_text(run_dir / "report.md", "\n".join(lines))

    summary = {
        "model": cfg.model.name, "selection_model": cfg.model.selector(), "n_records": n_records, "alpha": sel.get("alpha"), "train_ratio": train_ratio,
        "k": k, "subsets": rows,
        "metrics": {label: {key: m.get(key) for key in ("sft_loss", "pt_loss", "ifl_loss", "perplexity")}
                    | ({"exact_match": m["generation"].get("exact_match"), "rouge_l": m["generation"].get("rouge_l")}
                       if m.get("generation") else {})
                    for label, m in metrics.items()},
        "steps": {name: {"ran": info.ran, "seconds": round(info.seconds, 3), "key": info.key}
                  for name, info in infos.items()},
        "wall_seconds": round(wall_seconds, 3),
        "log_file": None if log_file is None else _rel(Path(log_file), run_dir),
    }
    atomic_write_json(run_dir / "summary.json", summary)
    return report


def _selection_section(run_dir: Path, cfg, infos: dict, sel: dict, rows: list[dict], select_dir: Path) -> list[str]:
    lines = ["## Selection", "",
             f"- method: {sel.get('method', cfg.selection.method)}; alpha: {_fmt(sel.get('alpha'))}"
             + (f" (automatic, {sel.get('alpha_method')})" if sel.get("alpha_method") else "")]
    if rows:
        lines += ["", "| ratio | examples | E_PT | E_IFL |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['ratio']:.2f} | {_fmt(r['k'])} | {_fmt(r['e_pt'], 2)} | {_fmt(r['e_ifl'], 2)} |" for r in rows]
    plots = [p for p in ("pareto.png", "plateau.png", "alpha_curve.csv") if (select_dir / p).is_file()]
    if plots:
        lines += ["", "Alpha search: " + ", ".join(f"[{p}]({_rel(select_dir / p, run_dir)})" for p in plots)]
    if "export" in infos:
        exp = run_dir / infos["export"].outputs.get("dir", "export")
        lines += ["", f"Exports (records with `weight`, chat variant, LLaMA-Factory and axolotl entries): "
                      f"[{_rel(exp, run_dir)}/]({_rel(exp / 'EXPORTS.md', run_dir)})"]
    return lines


LOSS_PLOT = "training_loss.png"
_TRAINED = (("warmup", "warm-up", "dir"), ("train_coreset", "coreset", "adapter"), ("train_random", "random", "adapter"),
            ("train_full", "full", "adapter"))


def _loss_curve_section(run_dir: Path, infos: dict) -> list[str]:
    """`training_loss.png` in the run folder (every trained model's loss per optimizer step), and
    the report's link to it; nothing when no training step has a manifest."""
    from mint._io import atomic_write_bytes
    from mint.pipeline.plots import loss_curve, training_loss_png

    curves = {}
    for step, label, key in _TRAINED:
        out = (infos[step].outputs or {}).get(key) if step in infos else None
        folder = run_dir / out if out else None
        if folder is not None and key == "adapter":
            folder = folder.parent
        manifest = folder / "manifest.json" if folder is not None else None
        if manifest is None or not manifest.is_file():
            continue
        try:
            curves[label] = loss_curve(read_json(manifest))
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("no loss curve for %s (%s)", label, e)
    curves = {label: c for label, c in curves.items() if len(c[0])}
    if not curves:
        return []
    atomic_write_bytes(run_dir / LOSS_PLOT, training_loss_png(curves))
    return ["", f"Training loss per optimizer step ({', '.join(curves)}): [{LOSS_PLOT}]({LOSS_PLOT})", "",
            f"![training loss]({LOSS_PLOT})"]


def _evaluation_section(metrics: dict[str, dict]) -> list[str]:
    gen = any("generation" in m for m in metrics.values())
    lines = ["", "## Held-out evaluation", "",
             "Response-token losses (lower is better); perplexity = exp(token-weighted SFT loss).", "",
             "| model | SFT loss | PT loss | IFL loss | perplexity |" + (" exact match | ROUGE-L |" if gen else ""),
             "|---|---:|---:|---:|---:|" + ("---:|---:|" if gen else "")]
    for label in [m for m in MODEL_ROWS if m in metrics]:
        m = metrics[label]
        row = (f"| {_ROW_NAMES[label]} | {_fmt(m['sft_loss'])} | {_fmt(m['pt_loss'])} | {_fmt(m['ifl_loss'])} "
               f"| {_fmt(m['perplexity'], 2)} |")
        if gen:
            g = m.get("generation") or {}
            row += f" {_fmt(g.get('exact_match'), 3)} | {_fmt(g.get('rouge_l'), 3)} |"
        lines.append(row)
    if "base" in metrics and "coreset" in metrics:
        delta = metrics["coreset"]["sft_loss"] - metrics["base"]["sft_loss"]
        lines += ["", f"Coreset training changed the held-out SFT loss by {delta:+.4f} relative to the base model"
                      + (f" (random subset: {metrics['random']['sft_loss'] - metrics['base']['sft_loss']:+.4f})"
                         if "random" in metrics else "") + "."]
    lines += _per_task_table(metrics)
    lines += ["", "Benchmarks: hand an adapter to lm-evaluation-harness, e.g.", "", "```",
              (metrics.get("coreset") or next(iter(metrics.values())))["provenance"]["lm_eval"], "```"]
    return lines


def _per_task_table(metrics: dict[str, dict]) -> list[str]:
    tasks = sorted({t for m in metrics.values() for t in (m.get("per_task") or {})})
    if not tasks:
        return []
    labels = [m for m in MODEL_ROWS if m in metrics]
    lines = ["", "### SFT loss per task", "", "| task | n | " + " | ".join(labels) + " |",
             "|---|---:|" + "---:|" * len(labels)]
    for task in tasks:
        n = next((m["per_task"][task]["n_examples"] for m in metrics.values() if task in m.get("per_task", {})), "")
        vals = [_fmt((metrics[lab].get("per_task") or {}).get(task, {}).get("sft_loss")) for lab in labels]
        lines.append(f"| {task} | {n} | " + " | ".join(vals) + " |")
    return lines


def _time_section(infos: dict) -> list[str]:
    lines = ["", "## Time per step", "", "| step | seconds | this invocation |", "|---|---:|---|"]
    total = 0.0
    for name, info in infos.items():
        total += info.seconds
        lines.append(f"| {name} | {info.seconds:.1f} | {'ran' if info.ran else 'up to date, skipped'} |")
    return lines + [f"| total (all steps) | {total:.1f} | |", ""]


def short_summary(run_dir: str | os.PathLike) -> str:
    """A few lines for the terminal, from `summary.json`."""
    run_dir = Path(run_dir)
    s = read_json(run_dir / "summary.json")
    ran = [n for n, st in s["steps"].items() if st["ran"]]
    lines = [f"MINT run in {run_dir}: {len(ran)} step(s) ran"
             + (f" ({', '.join(ran)})" if ran else " (everything was up to date)")
             + f", {s['wall_seconds']:.1f} s",
             f"alpha {_fmt(s['alpha'])}; coreset {s['k']} of {s['n_records']} examples (ratio {s['train_ratio']:.2f})"]
    if s["metrics"]:
        lines.append(f"{'held-out':<10} {'SFT loss':>9} {'PT loss':>9} {'IFL loss':>9} {'ppl':>8}")
        for label in [m for m in MODEL_ROWS if m in s["metrics"]]:
            m = s["metrics"][label]
            lines.append(f"{label:<10} {m['sft_loss']:>9.4f} {m['pt_loss']:>9.4f} {m['ifl_loss']:>9.4f} "
                         f"{m['perplexity']:>8.2f}")
    lines.append(f"report: {run_dir / 'report.md'}")
    return "\n".join(lines)
