"""One source of truth for defaults: every library function's keyword defaults equal the config
defaults of the keys they stand for (so `mint run`, the subcommands and a library call agree).
The LoRA settings need no such test: the config's `lora` section is `LoraSettings` itself."""
from __future__ import annotations

import inspect

import pytest

from mint.pipeline.config import TRAINER_KEYS, RunConfig

CFG = RunConfig()
RENDER = {"max_length": CFG.data.max_length, "template": CFG.data.template, "schema": CFG.data.schema,
          "long_prompts": CFG.data.long_prompts, "assistant_turns": CFG.data.assistant_turns}
MODEL = {"device": CFG.model.device, "dtype": CFG.model.dtype}


def _defaults(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def _cases():
    from mint.model.evaluate import evaluate
    from mint.model.features import compute_features
    from mint.model.train import train_lora
    from mint.model.warmup import run_warmup
    from mint.pipeline.select_step import run_selection
    from mint.selection import select_coreset

    t, w, g, e, s = CFG.train, CFG.warmup, CFG.grads, CFG.eval, CFG.selection
    selection = {"ratios": s.ratios, "method": s.method, "alpha": s.alpha, "alpha_method": s.alpha_method,
                 "coef": s.coef, "preheat_ratio": s.preheat_ratio, "seed": CFG.seed, "partition": s.partition}
    return [
        (run_warmup, {"sample_ratio": w.sample_ratio, "epochs": w.epochs, "lr": w.lr, "seed": CFG.seed}),
        (train_lora, {"epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size, "grad_accum": t.grad_accum,
                      "weighting": t.weighting, "seed": CFG.seed, **RENDER, **MODEL,
                      **{key: getattr(t, key) for key in TRAINER_KEYS}}),
        (compute_features, {"proj_dim": g.proj_dim, "grad_type": g.grad_type, "batch_size": g.batch_size,
                            "storage_dtype": g.storage_dtype, "projection": g.projection, "sjlt_s": g.sjlt_s,
                            "shard_size": g.shard_size, "cache_mb": g.cache_mb, "buffer_mb": g.buffer_mb,
                            "seed": CFG.seed, **RENDER, **MODEL}),
        (evaluate, {"batch_size": e.batch_size, "generate": e.generate, "max_new_tokens": e.max_new_tokens,
                    "generate_limit": e.generate_limit, **RENDER, **MODEL}),
        (select_coreset, selection),
        (run_selection, selection),
    ]


@pytest.mark.parametrize("index", range(6))
def test_library_defaults_are_the_config_defaults(index):
    fn, expected = _cases()[index]
    have = _defaults(fn)
    wrong = {k: (have.get(k, "<no default>"), v) for k, v in expected.items()
             if not (k in have and (list(have[k]) if isinstance(have[k], tuple) else have[k]) == v)}
    assert not wrong, f"{fn.__module__}.{fn.__name__}: (library, config) defaults differ: {wrong}"
