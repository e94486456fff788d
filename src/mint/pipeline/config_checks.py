"""The range checks of a run configuration (`RunConfig.validate`): one MintError per bad value,
naming the key and the fix. The types are checked earlier, when the values are read."""
from __future__ import annotations

from typing import TYPE_CHECKING

from mint import choices
from mint.errors import MintError
from mint.pipeline.config import choice_lists, get_key
from mint.pipeline.coresets import coreset_file, same_ratio

if TYPE_CHECKING:
    from mint.pipeline.config import RunConfig

__all__ = ["validate"]


def validate(cfg: "RunConfig") -> None:
    """Every value in range, with a MintError naming the key and the fix."""
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise MintError(f"config key {key}: {msg}")

    for key, allowed in choice_lists().items():
        value = get_key(cfg, key)
        need(value in allowed, key, f"{value!r} is not one of {', '.join(allowed)}")
    s, t = cfg.selection, cfg.train
    need(len(s.ratios) > 0, "selection.ratios", "give at least one ratio")
    for r in s.ratios:
        need(0 < r <= 1, "selection.ratios", f"ratio {r} is outside (0, 1]; use e.g. 0.05 for 5%")
    names = [coreset_file(r) for r in s.ratios]
    need(len(set(names)) == len(names), "selection.ratios",
         f"{s.ratios} has ratios that round to the same two decimals (coreset file names); make them differ there")
    if t.ratio is not None:
        need(any(same_ratio(t.ratio, r) for r in s.ratios), "train.ratio",
             f"{t.ratio} is not among selection.ratios {s.ratios}; add it there or pick one of them")
    if s.alpha is not None:
        need(0 < s.alpha < 1, "selection.alpha", f"{s.alpha} is outside (0, 1); leave empty for automatic")
    if s.coef is not None:
        need(len(s.coef) == 3, "selection.coef", f"needs 3 numbers [c_sft, c_pt, c_ifl], got {s.coef}")
        need(min(s.coef) >= 0 and max(s.coef) > 0, "selection.coef", "coefficients must be >= 0, not all 0")
        need(s.alpha is None, "selection.coef", "give either selection.alpha or selection.coef, not both")
    need(0 < s.preheat_ratio <= 1, "selection.preheat_ratio", f"{s.preheat_ratio} is outside (0, 1]")
    need(s.preheat_max >= 2, "selection.preheat_max", f"{s.preheat_max} is too small: the pre-sample needs >= 2 rows")
    need(s.partition_size >= 2, "selection.partition_size", f"{s.partition_size} is too small: a part needs >= 2 rows")
    need(0 < cfg.warmup.sample_ratio <= 1, "warmup.sample_ratio", f"{cfg.warmup.sample_ratio} is outside (0, 1]")
    for sec in ("warmup", "train"):
        c = getattr(cfg, sec)
        need(c.lr > 0, f"{sec}.lr", f"{c.lr} must be > 0")
        need(c.epochs > 0, f"{sec}.epochs", f"{c.epochs} must be > 0")
        need(c.batch_size >= 1, f"{sec}.batch_size", "must be >= 1")
        need(c.grad_accum >= 1, f"{sec}.grad_accum", "must be >= 1")
        need(0 <= c.warmup_ratio < 1, f"{sec}.warmup_ratio", f"{c.warmup_ratio} is outside [0, 1)")
        need(c.weight_decay >= 0, f"{sec}.weight_decay", f"{c.weight_decay} must be >= 0")
        need(c.max_grad_norm is None or c.max_grad_norm > 0, f"{sec}.max_grad_norm",
             f"{c.max_grad_norm} must be > 0, or empty for no clipping")
        need(not (c.bf16 and c.fp16), f"{sec}.fp16", f"both {sec}.bf16 and {sec}.fp16 are set; choose one")
        need(len(c.report_to) > 0, f"{sec}.report_to", "give at least one name (none: no logging integration)")
    need(cfg.grads.batch_size >= 1, "grads.batch_size", "must be >= 1")
    g = cfg.grads
    need(g.shard_size >= 1, "grads.shard_size", "must be >= 1")
    need(g.cache_mb >= 0, "grads.cache_mb", "must be >= 0 (0: no cache)")
    need(g.buffer_mb >= 0, "grads.buffer_mb", "must be >= 0 (0: project every micro-batch)")
    need(g.sjlt_s >= 1, "grads.sjlt_s", "must be >= 1 (2 is the default)")
    need(g.proj_dim is None or g.sjlt_s <= g.proj_dim, "grads.sjlt_s", f"{g.sjlt_s} exceeds grads.proj_dim {g.proj_dim}")
    need(cfg.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
    need(cfg.grads.proj_dim is None or cfg.grads.proj_dim >= 1, "grads.proj_dim", "must be >= 1 or empty")
    need(cfg.data.max_length >= 8, "data.max_length", f"{cfg.data.max_length} is too small (>= 8)")
    need(cfg.lora.r >= 1, "lora.r", "must be >= 1")
    need(0 <= cfg.lora.dropout < 1, "lora.dropout", "must be in [0, 1)")
    need(cfg.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
    need(cfg.data.demo_examples >= 20, "data.demo_examples", "must be >= 20")
    need(cfg.data.demo_eval_examples >= 1, "data.demo_eval_examples", "must be >= 1")
    need(cfg.threads is None or cfg.threads >= 1, "threads", "must be >= 1 or empty")
    need(bool(cfg.output_dir), "output_dir", "must not be empty")
    need(choices.is_device(cfg.model.device), "model.device", f"{cfg.model.device!r} is not a device; {choices.DEVICES}")
