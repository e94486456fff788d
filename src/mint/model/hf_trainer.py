"""Weighted LoRA training through `transformers.Trainer` (docs/design.md "Training on the Trainer").

`WeightedTrainer` is a `Trainer` whose ``compute_loss`` applies the coreset weights and whose
training data loader is the step plan below; everything else (AdamW, the schedule, clipping,
bf16/fp16 with loss scaling, gradient checkpointing, DDP/FSDP/DeepSpeed through accelerate,
checkpoints and ``resume_from_checkpoint``, ``report_to``) is the Trainer's own.

The plan. ``positions`` is the example stream (one permutation or weighted draw per epoch, cut
at ``epochs * n``), cut into optimizer steps of ``batch_size * grad_accum * world_size`` examples.
Within a step the examples are sorted by length (less padding) and cut into micro-batches of
``batch_size``; micro-batch ``j`` of a step goes to rank ``j % world_size``. A rank short of
micro-batches in the last step gets one example with coefficient 0 (an exact no-op), so every
rank makes the same number of forward passes. The loss of a micro-batch is

    (sum over its examples of c_i * l_i) / n_step * world_size

with ``n_step`` the examples of the whole step over all ranks; DDP averages the gradients over
the ranks, so an update is ``sum_i c_i * grad l_i / n_step`` however the step is split: over
forward passes (batch size), accumulation or processes. With one process the order of examples,
forward passes and floating-point operations is the one of mint's earlier hand-written loop.

Example i's loss ``l_i`` is its response-token mean, with logits computed for the response
positions only (the model's ``logits_to_keep`` mask): no ``[batch, tokens, vocab]`` logits.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import warnings
from typing import Any, Sequence

import numpy as np

from mint.errors import MintError

__all__ = ["step_plan", "response_losses", "build_trainer", "training_arguments", "kept_global_rngs"]

log = logging.getLogger(__name__)


def step_plan(steps: Sequence[Sequence[int]], lengths: Sequence[int], coefs: np.ndarray, *, batch_size: int,
              world_size: int = 1, rank: int = 0) -> list[list[tuple[int, float, int, bool]]]:
    """The micro-batches of ``rank``: lists of (position, c_i, n_step, real); see the module docstring.
    ``steps`` are the positions of each optimizer step, ``lengths`` the token length of each
    position's example (the in-step sort key)."""
    batches = []
    for positions in steps:
        ordered = sorted(positions, key=lambda p: lengths[p])  # stable: ties keep the stream order
        n_step = len(ordered)
        micro = [ordered[s:s + batch_size] for s in range(0, n_step, batch_size)]
        per_rank = math.ceil(len(micro) / world_size)
        for k in range(per_rank):
            j = k * world_size + rank
            if j < len(micro):
                batches.append([(p, float(coefs[p]), n_step, True) for p in micro[j]])
            else:  # a pad so that every rank makes the same forward passes; c = 0 adds nothing
                batches.append([(ordered[0], 0.0, n_step, False)])
    return batches


def response_losses(model, batch: dict, *, response_only: bool = True):
    """Per-example mean cross entropy over the labelled tokens, float32, shape [B], with the
    output head on the response positions alone (`mint.model.modeling.response_token_losses`)."""
    from mint.model.modeling import response_token_losses

    return response_token_losses(model, batch, response_only=response_only)


class _Stream:
    """The Trainer's dataset: the micro-batches' items (tokenized example, c_i, n_step, real),
    addressed by a running index; ``batches`` is the batch sampler."""

    def __init__(self, tokenized, batches):
        self.items, self.batches = [], []
        for batch in batches:
            self.batches.append(list(range(len(self.items), len(self.items) + len(batch))))
            self.items.extend((tokenized[p], c, n, real) for p, c, n, real in batch)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        return self.items[k]


def _collator(ids: dict):
    import torch

    from mint.model.data import collate

    def collate_items(items):
        batch = collate([t for t, *_ in items], "sft", **ids)
        batch["coef"] = torch.tensor([c for _, c, _, _ in items], dtype=torch.float64)
        batch["real"] = torch.tensor([r for *_, r in items], dtype=torch.bool)
        batch["n_step"] = items[0][2]
        return batch

    return collate_items


@functools.cache
def _classes():
    """(WeightedTrainer, StepRecord), defined on first use: transformers loads only then."""
    from transformers import Trainer, TrainerCallback

    from mint.model.modeling import accepts_logits_to_keep

    class WeightedTrainer(Trainer):
        """`Trainer` with mint's weighted response-token loss and step plan (module docstring)."""

        def __init__(self, *a, stream, **k):
            super().__init__(*a, **k)
            self.stream = stream
            self.loss_is_scaled_for_ga = True  # compute_loss divides by the step's examples itself
            self.model_accepts_loss_kwargs = False  # no token count: the weights set the scale
            self.response_only = accepts_logits_to_keep(self.model)
            self.step_sums = [0.0, 0.0]  # this rank's weighted and plain loss sums in the current step

        def floating_point_ops(self, inputs):
            # the Trainer's own counts the model's parameters again for every forward pass
            if not hasattr(self, "_n_params"):
                self._n_params = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs["input_ids"].numel() * self._n_params

        def _clip_grad_norm(self, model):
            # the trainable (LoRA) weights alone, listed once: the same norm as over every parameter
            # (the frozen ones have no gradient) without walking the whole model each step
            if self.is_fsdp_enabled or self.is_deepspeed_enabled:
                return super()._clip_grad_norm(model)
            if not hasattr(self, "_trainable"):
                self._trainable = [p for p in model.parameters() if p.requires_grad]
            return self.accelerator.clip_grad_norm_(self._trainable, self.args.max_grad_norm)

        def get_train_dataloader(self):
            import torch
            from torch.utils.data import DataLoader

            # its own generator: starting the iterator must not draw from torch's global one (dropout's)
            return DataLoader(self.stream, batch_sampler=self.stream.batches, collate_fn=self.data_collator,
                              num_workers=0, generator=torch.Generator().manual_seed(0))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            coef, real, n_step = inputs.pop("coef"), inputs.pop("real"), inputs.pop("n_step")
            losses = response_losses(model, inputs, response_only=self.response_only)
            loss = (coef.to(losses.dtype) * losses).sum() / n_step
            self.step_sums[0] += float(loss.detach())
            self.step_sums[1] += float(losses.detach()[real].sum()) / n_step
            if self.args.world_size > 1:
                loss = loss * self.args.world_size  # DDP averages the ranks' gradients
            return (loss, None) if return_outputs else loss

    class StepRecord(TrainerCallback):
        """Before each optimizer step: the step's loss into ``history`` (a non-finite one is an
        error); after it, a checkpoint every ``checkpoint_seconds``."""

        def __init__(self, trainer, history: list, checkpoint_seconds: float, step_sizes: list[int], *,
                     desc: str, progress: bool):
            self.trainer, self.history, self.every = trainer, history, checkpoint_seconds
            self.sizes, self.desc, self.progress, self.bar = step_sizes, desc, progress, None
            self.last_save = time.time()

        def on_train_begin(self, args, state, control, **kw):
            from tqdm.auto import tqdm

            self.trainer.loop_seconds = -time.perf_counter()  # the optimizer steps alone
            self.bar = tqdm(total=sum(self.sizes), initial=sum(self.sizes[:state.global_step]), unit="ex",
                            desc=self.desc, disable=not self.progress or not state.is_world_process_zero)

        def on_train_end(self, args, state, control, **kw):
            self.trainer.loop_seconds += time.perf_counter()
            if self.bar is not None:
                self.bar.close()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            weighted, plain = self.trainer.step_sums
            self.trainer.step_sums = [0.0, 0.0]
            if args.world_size > 1:
                import torch
                import torch.distributed as dist

                sums = torch.tensor([weighted, plain], dtype=torch.float64, device=args.device)
                dist.all_reduce(sums)
                weighted, plain = sums.tolist()
            step = state.global_step + 1
            if not math.isfinite(weighted):
                raise MintError(f"the training loss became {weighted} at step {step}; lower the learning rate")
            self.history.append({"step": step, "loss": round(weighted, 6), "mean_loss": round(plain, 6),
                                 "lr": self.trainer.lr_scheduler.get_last_lr()[0]})

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                from pathlib import Path

                from mint._io import atomic_write_json

                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                from mint.model.checkpoint import HISTORY_FILE

                atomic_write_json(folder / HISTORY_FILE, self.history)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(self.sizes[state.global_step - 1])
                if self.history:
                    self.bar.set_postfix(loss=f"{self.history[-1]['loss']:.4f}")
            due = state.global_step < state.max_steps and time.time() - self.last_save >= self.every
            if args.world_size > 1:  # rank 0's clock decides: every rank saves at the same step
                import torch
                import torch.distributed as dist

                flag = torch.tensor([float(due)], device=args.device)
                dist.broadcast(flag, src=0)
                due = bool(flag.item())
            if due:
                control.should_save = True
                self.last_save = time.time()
            return control

    return WeightedTrainer, StepRecord


def build_trainer(model, tokenized, steps, coefs, *, ids: dict, args, history: list, checkpoint_seconds: float,
                  progress: bool, desc: str = "train"):
    """A `WeightedTrainer` over this rank's part of the step plan (``args``: `training_arguments`).
    Torch's generators are as they were before (the Trainer seeds them when it is built): the
    dropout stream continues from the caller's state."""
    import torch

    weighted_trainer, step_record = _classes()
    stream = _Stream(tokenized, step_plan(steps, [t.sft_length for t in tokenized], coefs,
                                          batch_size=args.per_device_train_batch_size,
                                          world_size=args.world_size, rank=args.process_index))
    cpu_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    trainer = weighted_trainer(model=model, args=args, data_collator=_collator(ids), stream=stream,
                               train_dataset=stream)
    torch.random.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state_all(cuda_state)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    # mint's own bar (examples, loss) instead of the Trainer's, which prints every step's log dict
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(step_record(trainer, history, checkpoint_seconds, [len(s) for s in steps], desc=desc,
                                     progress=progress))
    return trainer


@contextlib.contextmanager
def kept_global_rngs():
    """Python's and numpy's global generators as they were after the block (the Trainer seeds them)."""
    import random

    py, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def training_arguments(config: dict, *, output_dir, n_steps: int, device: str, logging_dir=None, **overrides: Any):
    """The `TrainingArguments` of a run from mint's training config (``config``)."""
    from transformers import TrainingArguments

    opts = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=config["batch_size"],
        gradient_accumulation_steps=config["grad_accum"],
        num_train_epochs=1,  # the plan holds every epoch
        learning_rate=config["lr"],
        optim="adamw_torch",  # the for-loop AdamW of mint's earlier loop (fused differs in the last bits)
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        weight_decay=config["weight_decay"],
        max_grad_norm=config["max_grad_norm"] if config["max_grad_norm"] is not None else 0.0,
        lr_scheduler_type=config.get("lr_scheduler_type", "linear"),
        # the floor of ratio * steps, as mint's earlier loop (a float warmup_steps < 1 is the ceiling)
        warmup_steps=int(config["warmup_ratio"] * n_steps),
        bf16=config.get("bf16", False),
        fp16=config.get("fp16", False),
        # transformers 5 calls gradient_checkpointing activation_checkpointing
        activation_checkpointing=config.get("gradient_checkpointing", False),
        activation_checkpointing_kwargs={"use_reentrant": False},  # works with frozen base weights
        logging_steps=1,
        logging_first_step=True,
        save_strategy="no",  # checkpoints come from the time-based callback
        save_total_limit=1,
        save_only_model=False,
        report_to=list(config.get("report_to") or ["none"]),
        seed=config["seed"],
        use_cpu=device == "cpu",
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )
    opts.update(overrides)
    return TrainingArguments(**opts)


# ---------------------------------------------------------------------------------------------
# One run


# Over 60 lines: the run reads top to bottom (model, data, plan, Trainer, outputs); splitting it
# would only pass its dozen locals around.
def run_training(examples, idx, w, config: dict, out, *, checkpoints, model_name_or_dir, device: str, dtype: str,
                 lora, progress: bool, checkpoint_seconds: float, assistant_turns: str, report_to: list[str],
                 resume: bool) -> dict | None:
    """The training run, inside the caller's `seeded_torch` block: the adapter and AdamW state
    into ``out`` (None on ranks other than 0, which write nothing); the manifest (less its data
    entry) on rank 0."""
    import os
    from pathlib import Path

    from mint._io import versions
    from mint.model.checkpoint import OPTIMIZER_FILE, history_of, resume_point, save_optimizer_state
    from mint.model.data import collate_ids, tokenize_examples
    from mint.model.distributed import process_group
    from mint.model.modeling import add_lora, load_model_and_tokenizer, resolve_model
    from mint.model.train import MANIFEST_FORMAT, _example_steps, loss_coefficients

    started = time.time()
    rank, world, dist = process_group()
    rng = np.random.default_rng(config["seed"])  # example order
    model, tokenizer = load_model_and_tokenizer(model_name_or_dir, device=device, dtype=dtype)
    model = add_lora(model, lora)
    model.train()
    tokenized = tokenize_examples([examples[i] for i in idx], tokenizer, max_length=config["max_length"],
                                  template=config["template"], long_prompts=config["long_prompts"],
                                  assistant_turns=assistant_turns, progress=progress and rank == 0)
    n_total, steps = _example_steps(len(tokenized), config, w, rng)
    resume_from = resume_point(checkpoints, config, resume, rank=rank, dist=dist)
    history: list[dict] = []
    tensorboard = Path(out) / "tensorboard" if out is not None and "tensorboard" in report_to else None
    args = _refused_as_mint_error(training_arguments, config, report_to, device)(
        config, output_dir=checkpoints, n_steps=len(steps), device=device, report_to=report_to or ["none"])
    with kept_global_rngs(), warnings.catch_warnings():
        # transformers warns of its own renamed attribute when peft reads it; nothing for a user to change
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        if tensorboard is not None:
            os.environ["TENSORBOARD_LOGGING_DIR"] = str(tensorboard)  # read when the callback is built
        try:
            trainer = _refused_as_mint_error(build_trainer, config, report_to, device)(
                model, tokenized, steps, loss_coefficients(w, config["weighting"]), ids=collate_ids(tokenizer),
                args=args, history=history, checkpoint_seconds=checkpoint_seconds, progress=progress,
                desc=config["kind"])
        finally:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        if resume_from:
            history.extend(history_of(resume_from))
        log.info("training LoRA on %d examples (%d optimizer steps of %d, weighting %s) on %s%s%s",
                 len(tokenized), len(steps), len(steps[0]), config["weighting"], device,
                 f" x {world} processes" if world > 1 else "", f", resuming from {resume_from}" if resume_from else "")
        trainer.train(resume_from_checkpoint=resume_from)
    if out is None:
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.save_pretrained(out / "adapter")
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    save_optimizer_state(model, optimizer, out / OPTIMIZER_FILE, betas=(args.adam_beta1, args.adam_beta2),
                         eps=args.adam_epsilon)
    return {
        "format": MANIFEST_FORMAT,
        "config": config,
        "base_model": {"name": config["base_model"], "path": str(resolve_model(model_name_or_dir))},
        "n_steps": len(steps),
        "n_examples_seen": n_total,
        "n_truncated": int(sum(t.truncated for t in tokenized)),
        "history": history,
        "log_history": trainer.state.log_history,  # the Trainer's own log (loss, grad_norm, learning_rate)
        "final_loss": history[-1]["loss"] if history else None,
        "device": device,
        "world_size": world,
        "report_to": report_to,
        "versions": versions(),
        "seconds": round(time.time() - started, 2),
        "train_seconds": round(trainer.loop_seconds, 2),  # the optimizer steps alone (no set-up)
    }


def _refused_as_mint_error(fn, config: dict, report_to, device: str):
    """``fn`` with the Trainer's own refusals of settings (fp16 without a GPU, an unknown
    ``report_to`` name, ...) as `MintError`s naming the settings."""
    def call(*a, **k):
        try:
            return fn(*a, **k)
        except (ValueError, ImportError) as e:
            raise MintError(f"transformers refused the training settings: {e} (bf16 {config.get('bf16', False)}, "
                            f"fp16 {config.get('fp16', False)}, report_to {report_to}, device {device}); "
                            "change them") from e
    return call
