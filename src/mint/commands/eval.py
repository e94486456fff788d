"""`mint eval`: held-out losses (SFT, PT, IFL), perplexity and optional generation metrics."""
from __future__ import annotations

import argparse

HELP = "evaluate a base model, optionally with a LoRA adapter, on a held-out file (writes metrics.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("For benchmark suites hand the adapter to lm-evaluation-harness: "
                     "lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --tasks TASKS")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="base model: a folder, a hub id, or smollm2-135m-instruct (default)")
    parser.add_argument("--adapter", help="LoRA adapter folder (the adapter/ folder of `mint train`, or its parent)")
    parser.add_argument("--data", required=True, help="held-out file (JSON/JSONL in the training data's schema)")
    parser.add_argument("--output_dir", help="write metrics.json and per_example.jsonl here")
    parser.add_argument("--batch_size", type=int, default=8, help="examples per forward pass (default 8)")
    parser.add_argument("--max_length", type=int, default=512, help="tokens per example (default 512)")
    parser.add_argument("--template", default="auto", choices=["auto", "chat", "plain"], help="prompt rendering")
    parser.add_argument("--schema", default="auto", choices=["auto", "alpaca", "chat", "prompt_completion"],
                        help="record schema (default: from the first record)")
    parser.add_argument("--long_prompts", choices=("error", "truncate"), default="error",
                        help="a prompt that alone fills max_length: error (default) or truncate it from the left")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    parser.add_argument("--generate", action="store_true", help="also greedy-generate and score exact match, ROUGE-L")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="generation length (default 32)")
    parser.add_argument("--generate_limit", type=int, help="generate for at most this many examples")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from mint.model.evaluate import evaluate

    adapter = args.adapter
    if adapter and not (Path(adapter) / "adapter_config.json").is_file() and (Path(adapter) / "adapter").is_dir():
        adapter = str(Path(adapter) / "adapter")  # the folder of `mint train` holds adapter/
    m = evaluate(args.model, args.data, adapter=adapter, output_dir=args.output_dir, batch_size=args.batch_size,
                 max_length=args.max_length, template=args.template, schema=args.schema, long_prompts=args.long_prompts,
                 device=args.device,
                 dtype=args.dtype, generate=args.generate, max_new_tokens=args.max_new_tokens,
                 generate_limit=args.generate_limit)
    shown = {k: m[k] for k in ("n_examples", "sft_loss", "pt_loss", "ifl_loss", "perplexity")}
    if "generation" in m:
        shown.update({k: m["generation"][k] for k in ("exact_match", "rouge_l", "n_generated")})
    print(json.dumps(shown, indent=2))
    if args.output_dir:
        print(f"metrics written to {Path(args.output_dir) / 'metrics.json'}")
    return 0
