"""`mint warmup`: a short LoRA training on a random sample, keeping the adapter and AdamW state."""
from __future__ import annotations

import argparse

HELP = "warm a LoRA adapter up on a random sample of the data (adapter + AdamW state for `mint grads`)"


def add_model_arguments(parser: argparse.ArgumentParser, *, epochs: float, lr: float) -> None:
    """Options shared by `mint warmup` and `mint train`."""
    parser.add_argument("--data", required=True, help="instruction data: JSON array or JSON Lines (.gz ok)")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="base model: local folder, hub id in the local cache, or smollm2-135m-instruct (default)")
    parser.add_argument("--output_dir", required=True, help="output folder (adapter/, optimizer.safetensors, manifest.json)")
    parser.add_argument("--epochs", type=float, default=epochs, help=f"passes over the examples (default {epochs:g})")
    parser.add_argument("--lr", type=float, default=lr, help=f"AdamW learning rate, linear schedule (default {lr:g})")
    parser.add_argument("--batch_size", type=int, default=8, help="examples per forward pass (default 8)")
    parser.add_argument("--grad_accum", type=int, default=1, help="forward passes per optimizer step (default 1)")
    parser.add_argument("--lora_r", type=int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--lora_alpha", type=float, default=16.0, help="LoRA alpha (default 16)")
    parser.add_argument("--lora_dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    parser.add_argument("--target_modules", nargs="+", default=None,
                        help="modules to adapt (default: attention projections of the architecture)")
    parser.add_argument("--max_length", type=int, default=512,
                        help="tokens per example; prompts are cut from the left, responses kept (default 512)")
    parser.add_argument("--long_prompts", choices=("error", "truncate"), default="error",
                        help="a prompt that alone fills max_length: error (default) or cut it from the left")
    parser.add_argument("--template", choices=("auto", "chat", "plain"), default="auto",
                        help="prompt rendering: the tokenizer's chat template when it has one (auto), or plain")
    parser.add_argument("--schema", choices=("auto", "alpaca", "chat", "prompt_completion"), default="auto",
                        help="record schema (default: detected from the first record)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sample, LoRA init and order (default 0)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="model dtype: auto = float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder holding another run")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")


def common_options(args: argparse.Namespace) -> dict:
    from mint.model.modeling import LoraSettings

    lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                        target_modules=tuple(args.target_modules) if args.target_modules else None)
    return dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, grad_accum=args.grad_accum, lora=lora,
                max_length=args.max_length, long_prompts=args.long_prompts, template=args.template,
                schema=args.schema, seed=args.seed, device=args.device, dtype=args.dtype,
                overwrite=args.overwrite, progress=not args.no_progress)


def summary(kind: str, out) -> str:
    from mint.model.train import read_train_manifest

    m = read_train_manifest(out)
    c = m["config"]
    first, last = m["history"][0]["mean_loss"], m["history"][-1]["mean_loss"]
    return (f"mint {kind}: {c['n_train']} of {c['n_records']} examples, {m['n_steps']} steps, "
            f"loss {first:.4f} -> {last:.4f}, {m['seconds']:.1f} s on {m['device']}\n"
            f"  adapter: {out}/adapter  (manifest: {out}/manifest.json)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample_ratio", type=float, default=0.05,
                        help="fraction of the data drawn at random for the warm-up (default 0.05, as in LESS/MINT)")
    # LESS: 4 epochs at lr 2e-5
    add_model_arguments(parser, epochs=4.0, lr=2e-5)


def run(args: argparse.Namespace) -> int:
    from mint.model.warmup import run_warmup

    out = run_warmup(args.model, args.data, args.output_dir, sample_ratio=args.sample_ratio, **common_options(args))
    print(summary("warmup", out))
    return 0
