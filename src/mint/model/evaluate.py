"""Held-out evaluation of a base model, optionally with a LoRA adapter.

Losses are the ones MINT is built on (docs/design.md section 1), over the response tokens only:

- ``sft_loss``: mean over examples of each example's response-token mean cross entropy given the
  prompt (the instruction-tuning loss); ``pt_loss`` the same without the prompt; ``ifl_loss`` =
  ``sft_loss - pt_loss``;
- ``sft_token_loss``: total response-token cross entropy divided by the number of response tokens
  (long answers count more), and ``perplexity = exp(sft_token_loss)``.

When records carry a ``task`` field the same numbers are given per task. Optionally answers are
generated greedily (only for examples whose reference fits in ``max_new_tokens``) and scored by
exact match (after lower-casing and collapsing whitespace) and ROUGE-L F1 (longest common
subsequence over lower-cased alphanumeric tokens, as the `rouge_score` package tokenizes).

For benchmark suites, hand the adapter to lm-evaluation-harness:
``lm_eval --model hf --model_args pretrained=BASE,peft=ADAPTER --tasks TASKS`` where BASE is the
model folder (`mint.model.modeling.resolve_model(name)` gives it for an alias) and ADAPTER the folder
holding ``adapter_config.json``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from mint.errors import MintError

__all__ = ["evaluate", "stop_ids", "rouge_l", "exact_match", "lcs_length", "lm_eval_command", "read_metrics"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "per_example.jsonl"


# ---------------------------------------------------------------------------------------------
# Text metrics (pure)


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def exact_match(prediction: str, reference: str) -> float:
    return float(_normalize(prediction) == _normalize(reference))


def _rouge_tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: 2PR/(P+R) with P = LCS/|prediction|, R = LCS/|reference|; 0 when either is empty."""
    p, r = _rouge_tokens(prediction), _rouge_tokens(reference)
    if not p or not r:
        return 0.0
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def lm_eval_command(base: str | os.PathLike, adapter: str | os.PathLike | None, tasks: str = "TASKS") -> str:
    args = f"pretrained={base}" + (f",peft={adapter}" if adapter else "")
    return f"lm_eval --model hf --model_args {args} --tasks {tasks}"


# ---------------------------------------------------------------------------------------------
# Model evaluation


def _summary(sft: list[float], pt: list[float], counts: list[int]) -> dict[str, float]:
    n_tok = sum(counts)
    token_loss = sum(s * c for s, c in zip(sft, counts)) / n_tok
    mean_sft, mean_pt = sum(sft) / len(sft), sum(pt) / len(pt)
    return {
        "n_examples": len(sft),
        "n_response_tokens": n_tok,
        "sft_loss": mean_sft,
        "pt_loss": mean_pt,
        "ifl_loss": mean_sft - mean_pt,
        "sft_token_loss": token_loss,
        "perplexity": math.exp(token_loss),
    }


def _my_batches(n_batches: int) -> tuple[list[int], Any]:
    """The batch numbers of this process (under torchrun batch j goes to rank j % world size:
    the same batches as one process, so the same numbers) and the process group (None alone)."""
    from mint.model.distributed import process_group

    rank, world, dist = process_group()
    return [j for j in range(n_batches) if j % world == rank], dist


def _gathered(mine: dict, dist) -> dict:
    """Every rank's ``{batch: result}`` merged (``mine`` alone without a process group)."""
    if dist is None:
        return mine
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return {j: r for part in parts for j, r in part.items()}


def _losses(model, tokenized, ids, batch_size: int, desc: str) -> tuple[list[float], list[float]]:
    import torch
    from tqdm.auto import tqdm

    from mint.model.data import collate
    from mint.model.modeling import response_token_losses

    # Batches of similar length waste less compute on padding; results are put back in order.
    order = sorted(range(len(tokenized)), key=lambda k: tokenized[k].sft_length)
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    mine, dist = _my_batches(len(chunks))
    done = {}
    with torch.no_grad():
        for j in tqdm(mine, desc=desc, unit="batch", disable=None if dist is None or dist.get_rank() == 0 else True):
            batch = [tokenized[k] for k in chunks[j]]
            done[j] = [response_token_losses(model, collate(batch, view, **ids)).tolist() for view in ("sft", "pt")]
    sft, pt = [0.0] * len(tokenized), [0.0] * len(tokenized)
    for j, (sft_losses, pt_losses) in _gathered(done, dist).items():
        for k, s, p in zip(chunks[j], sft_losses, pt_losses):
            sft[k], pt[k] = float(s), float(p)
    return sft, pt


def stop_ids(model, tokenizer, tokenized=()) -> list[int]:
    """The ids generation stops on: the model's ``generation_config.eos_token_id`` (one id or a
    list, e.g. Llama-3's ``<|end_of_text|>`` and ``<|eot_id|>``), the tokenizer's EOS, and the
    end-of-turn token the learned responses end with (what the chat template writes)."""
    from mint.model.turns import special_ids

    config_ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(config_ids) if isinstance(config_ids, (list, tuple)) else [config_ids]
    ids.append(tokenizer.eos_token_id)
    specials = special_ids(tokenizer)
    ids += sorted({t.last_response_ids[-1] for t in tokenized
                   if not t.response_truncated and t.last_response_ids[-1] in specials})
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _generate(model, tokenizer, tokenized, batch_size: int, max_new_tokens: int, stops: list[int]) -> list[str]:
    """Greedy answers to the last turn of the given examples, batched with left padding, each
    cut at the first of the ``stops`` ids."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    starts = list(range(0, len(tokenized), batch_size))
    mine, dist = _my_batches(len(starts))
    done: dict[int, list[str]] = {}
    with torch.no_grad():
        for j in tqdm(mine, desc="generate", unit="batch", disable=None if dist is None or dist.get_rank() == 0 else True):
            start = starts[j]
            prompts = [t.last_prompt_ids for t in tokenized[start:start + batch_size]]
            width = max(len(p) for p in prompts)
            input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for k, p in enumerate(prompts):
                input_ids[k, width - len(p):] = torch.tensor(p)
                mask[k, width - len(p):] = 1
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 eos_token_id=stops if len(stops) > 1 else stops[0], pad_token_id=pad)
            answers = done[j] = []
            for row in out[:, width:].tolist():
                end = next((i for i, t in enumerate(row) if t in stops), len(row))
                answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    done = _gathered(done, dist)
    return [answer for j in range(len(starts)) for answer in done[j]]


# Over 60 lines only by its signature (one keyword per option) and docstring; the body is ~50.
def evaluate(
    model_name_or_dir: str | os.PathLike,
    data_path: str | os.PathLike,
    *,
    adapter: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    template: str = "auto",
    schema: str = "auto",
    long_prompts: str = "error",
    assistant_turns: str = "all",
    device: str = "auto",
    dtype: str = "auto",
    generate: bool = False,
    max_new_tokens: int = 32,
    generate_limit: int | None = None,
    model_and_tokenizer: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Metrics of the model (plus adapter) on the held-out file; written to
    ``output_dir/metrics.json`` (and per-example numbers to ``per_example.jsonl``) when given.

    ``model_and_tokenizer`` reuses an already loaded base model (the adapter, if any, is applied
    on top and removed again), which saves reloading it for every adapter of a run. Under
    torchrun every rank calls it: the batches are spread over the ranks (the numbers are those of
    one process) and rank 0 writes the files."""
    from mint._io import atomic_write_json
    from mint.model.data import collate_ids, load_examples, token_settings, tokenize_examples
    from mint.model.modeling import load_lora, load_model_and_tokenizer
    from mint.records import write_jsonl

    if batch_size < 1:
        raise MintError(f"batch_size must be >= 1, got {batch_size}")
    if output_dir is not None:
        from mint._folders import check_writable

        check_writable(output_dir)  # before any computing
    t0 = time.perf_counter()
    data_path = Path(data_path)
    examples = load_examples(data_path, schema=schema, assistant_turns=assistant_turns)
    if model_and_tokenizer is None:
        model, tokenizer = load_model_and_tokenizer(model_name_or_dir, device=device, dtype=dtype)
    else:
        model, tokenizer = model_and_tokenizer
    if adapter is not None:
        model = load_lora(model, adapter)
    model.eval()
    try:
        tokenized = tokenize_examples(examples, tokenizer, max_length=max_length, template=template,
                                      long_prompts=long_prompts, assistant_turns=assistant_turns)
        desc = "eval " + (Path(adapter).name if adapter else "base")
        sft, pt = _losses(model, tokenized, collate_ids(tokenizer), batch_size, desc)
        counts = [len(t.response_ids) for t in tokenized]
        per_example: list[dict[str, Any]] = [
            {"index": ex.index, "task": ex.record.get("task"), "sft_loss": s, "pt_loss": p, "response_tokens": c}
            for ex, s, p, c in zip(examples, sft, pt, counts)
        ]
        gen = None
        if generate:
            gen = _score_generations(model, tokenizer, examples, tokenized, per_example, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, generate_limit=generate_limit)
    finally:
        if adapter is not None and model_and_tokenizer is not None:
            model.unload()  # give the caller its base model back without the adapter layers

    metrics = _metrics(sft, pt, counts, per_example, gen)
    settings = token_settings(examples, template=template, max_length=max_length, long_prompts=long_prompts,
                              assistant_turns=assistant_turns)
    param = next(model.parameters())
    run_settings = {"batch_size": batch_size, "generate": generate, "max_new_tokens": max_new_tokens,
                    "generate_limit": generate_limit, "dtype": str(param.dtype), "device": str(param.device)}
    metrics["provenance"] = _provenance(model_name_or_dir, adapter, data_path, settings, run_settings, started=t0)
    if output_dir is not None and int(os.environ.get("RANK", "0") or 0) == 0:  # torchrun: rank 0 writes
        out = Path(output_dir)
        write_jsonl(out / PREDICTIONS_FILE, per_example)
        atomic_write_json(out / METRICS_FILE, metrics)
    return metrics


def _score_generations(model, tokenizer, examples, tokenized, per_example: list[dict], *, batch_size: int,
                       max_new_tokens: int, generate_limit: int | None) -> dict[str, Any]:
    """Greedy answers scored into ``per_example`` (exact match, ROUGE-L); the generation summary."""
    # Only short answers: a reference longer than max_new_tokens could never match.
    short = [k for k, t in enumerate(tokenized) if len(t.last_response_ids) - 1 <= max_new_tokens]  # minus EOS
    chosen = short[:generate_limit] if generate_limit is not None else short
    answers = _generate(model, tokenizer, [tokenized[k] for k in chosen], batch_size, max_new_tokens,
                        stop_ids(model, tokenizer, tokenized))
    for k, answer in zip(chosen, answers):
        ref = examples[k].response
        per_example[k].update(prediction=answer, exact_match=exact_match(answer, ref), rouge_l=rouge_l(answer, ref))
    return {"n_generated": len(chosen), "max_new_tokens": max_new_tokens, "n_skipped_long": len(tokenized) - len(short)}


def _metrics(sft: list[float], pt: list[float], counts: list[int], per_example: list[dict],
             gen: dict | None) -> dict[str, Any]:
    """The summary, the generation scores and the per-task summaries."""
    metrics: dict[str, Any] = _summary(sft, pt, counts)
    if gen is not None:
        scored = [e for e in per_example if "exact_match" in e]
        gen["exact_match"] = sum(e["exact_match"] for e in scored) / len(scored) if scored else None
        gen["rouge_l"] = sum(e["rouge_l"] for e in scored) / len(scored) if scored else None
        metrics["generation"] = gen
    groups: dict[str, list[dict]] = defaultdict(list)
    for e in per_example:
        if e["task"] is not None:
            groups[str(e["task"])].append(e)
    if groups:
        metrics["per_task"] = {}
        for task in sorted(groups):
            rows = groups[task]
            entry = _summary([r["sft_loss"] for r in rows], [r["pt_loss"] for r in rows],
                             [r["response_tokens"] for r in rows])
            scored = [r for r in rows if "exact_match" in r]
            if scored:
                entry["exact_match"] = sum(r["exact_match"] for r in scored) / len(scored)
                entry["rouge_l"] = sum(r["rouge_l"] for r in scored) / len(scored)
            metrics["per_task"][task] = entry
    return metrics


def _provenance(model_name_or_dir, adapter, data_path: Path, settings: dict, run_settings: dict, *,
                started: float) -> dict[str, Any]:
    from mint._io import versions
    from mint.model.data import dataset_fingerprint
    from mint.model.modeling import adapter_sha256, resolve_model

    try:  # the folder lm-evaluation-harness needs (an alias is resolved to its converted folder)
        base_dir = resolve_model(model_name_or_dir)
    except (MintError, OSError):
        base_dir = model_name_or_dir
    return {
        "model": str(model_name_or_dir),
        "adapter": str(adapter) if adapter else None,
        "adapter_sha256": adapter_sha256(adapter, missing_ok=True) if adapter else None,
        "data": str(data_path),
        "data_fingerprint": dataset_fingerprint(data_path, settings),
        "settings": {**settings, **run_settings},
        "versions": versions(),
        "seconds": round(time.perf_counter() - started, 3),
        "lm_eval": lm_eval_command(base_dir, adapter),
    }


def read_metrics(folder: str | os.PathLike) -> dict[str, Any]:
    from mint._io import read_json

    path = Path(folder) / METRICS_FILE
    if not path.is_file():
        raise MintError(f"{path} not found; run `mint eval` (or `mint run`) to produce it")
    return read_json(path)
