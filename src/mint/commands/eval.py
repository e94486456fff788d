"""`mint eval`: held-out losses (SFT, PT, IFL), perplexity and optional generation metrics."""
from __future__ import annotations

import argparse

from mint.commands.options import MODEL_KEYS, RENDER_KEYS, add_config_options, apply_threads, config_from_args
from mint.commands.session import add_wait_option

HELP = "evaluate a base model, optionally with a LoRA adapter, on a held-out file (writes metrics.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("For benchmark suites hand the adapter to lm-evaluation-harness: "
                     "lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --tasks TASKS")
    add_config_options(parser, [("data.eval", "--data"), *MODEL_KEYS, *RENDER_KEYS, "threads",
                                ("eval.batch_size", "--batch_size"), ("eval.generate", "--generate"),
                                ("eval.max_new_tokens", "--max_new_tokens"), ("eval.generate_limit", "--generate_limit")],
                       required=["data.eval"])
    parser.add_argument("--adapter", help="LoRA adapter folder (the adapter/ folder of `mint train`, or its parent)")
    parser.add_argument("--output_dir", help="write metrics.json and per_example.jsonl here")
    add_wait_option(parser)


def run(args: argparse.Namespace) -> int:
    import json
    from contextlib import nullcontext
    from pathlib import Path

    from mint.commands.session import output_folder
    from mint.pipeline.steps import eval_call

    cfg = config_from_args(args)
    apply_threads(cfg)
    adapter = args.adapter
    if adapter and not (Path(adapter) / "adapter_config.json").is_file() and (Path(adapter) / "adapter").is_dir():
        adapter = str(Path(adapter) / "adapter")  # the folder of `mint train` holds adapter/
    with output_folder(args, args.output_dir) if args.output_dir else nullcontext():  # locked, checked writable
        m = eval_call(cfg, Path(cfg.data.eval), adapter, args.output_dir)
    shown = {k: m[k] for k in ("n_examples", "sft_loss", "pt_loss", "ifl_loss", "perplexity")}
    if "generation" in m:
        shown.update({k: m["generation"][k] for k in ("exact_match", "rouge_l", "n_generated")})
    print(json.dumps(shown, indent=2))
    if args.output_dir:
        print(f"metrics written to {Path(args.output_dir) / 'metrics.json'}")
    return 0
