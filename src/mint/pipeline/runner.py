"""`mint run`: the whole MINT pipeline from one config, resumable step by step.

data -> warmup -> grads -> select -> export -> train_coreset (+ train_random, train_full)
-> eval/{base, coreset, random, full} -> report.md

Each step writes into its own subfolder of the run folder (exactly what the step's library
function writes, e.g. `mint.model.train.train_lora` for `train_coreset/`) and the pipeline records it in
`steps/<step>.json` with a key: the sha256 of everything that determines its output (its
settings, the keys of the steps it reads, input file hashes). A step whose record is done with
the same key is skipped; one whose key changed has its folder cleared and is redone, so changing
one config key redoes only the steps that depend on it. A step interrupted (Ctrl-C, crash) stays
"running" and the next invocation calls it again on the same folder, where the step functions
resume their own work (finished training runs are kept, feature shards resume).

The run folder records its identity (model and training data) in `run.json`; a folder holding a
different run, or files mint did not write, is refused unless `overwrite=True`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mint._io import atomic_write_json, read_json, sha256_bytes, sha256_file, versions
from mint.pipeline.config import RunConfig, save_config
from mint.errors import MintError

__all__ = ["run_pipeline", "PipelineResult", "StepInfo", "STEPS_DIR", "RUN_FILE", "read_step"]

log = logging.getLogger(__name__)

STEPS_DIR = "steps"
RUN_FILE = "run.json"
DEMO_DATA_VERSION = 1  # bump when mint.pipeline.demo_data changes what it generates
# Folders and files a run creates; --overwrite clears only these, never anything else.
STEP_DIRS = (STEPS_DIR, "data", "warmup", "grads", "select", "export", "train_coreset", "train_random",
             "train_full", "eval")
RUN_FILES = (RUN_FILE, "config.yaml", "report.md", "summary.json")


@dataclass
class StepInfo:
    name: str
    key: str
    ran: bool  # False: skipped because its outputs were already there
    seconds: float  # time of the run that produced the outputs
    outputs: dict = field(default_factory=dict)


@dataclass
class PipelineResult:
    run_dir: Path
    steps: dict[str, StepInfo]
    metrics: dict[str, dict]  # model label -> metrics.json contents
    report: Path


def _step_path(run_dir: Path, name: str) -> Path:
    return run_dir / STEPS_DIR / (name.replace("/", "_") + ".json")


def read_step(run_dir: str | os.PathLike, name: str) -> dict | None:
    """The pipeline's record of one step (key, status, inputs, seconds, outputs), or None."""
    path = _step_path(Path(run_dir), name)
    return read_json(path) if path.is_file() else None


def _key(inputs: dict) -> str:
    return sha256_bytes(json.dumps(inputs, sort_keys=True, default=str).encode("utf-8"))


class _Steps:
    """Runs steps in a run folder, skipping those whose key matches a finished record."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.infos: dict[str, StepInfo] = {}

    def rel(self, path: Path | str) -> str:
        return os.path.relpath(Path(path), self.run_dir)

    def abs(self, rel: str) -> Path:
        return self.run_dir / rel

    def run(self, name: str, inputs: dict, fn: Callable[[Path], dict]) -> StepInfo:
        folder = self.run_dir / name
        key = _key(inputs)
        state_path = _step_path(self.run_dir, name)
        state = read_json(state_path) if state_path.is_file() else None
        if state and state.get("key") == key and state.get("status") == "done":
            info = StepInfo(name, key, False, float(state.get("seconds", 0.0)), state.get("outputs", {}))
            log.info("step %-14s up to date, skipped", name)
            self.infos[name] = info
            return info
        if state is not None and state.get("key") != key and folder.exists():
            # outputs of other settings: the step functions would refuse them
            log.info("step %-14s settings changed; clearing %s", name, folder)
            shutil.rmtree(folder)
        elif folder.exists():
            # an interrupted run, or outputs made outside the pipeline (e.g. features computed
            # with torchrun): the step functions resume or reuse them after checking their manifests
            log.info("step %-14s continuing with the existing %s", name, folder)
        record = {"step": name, "key": key, "status": "running", "inputs": inputs, "versions": versions()}
        atomic_write_json(state_path, record)
        log.info("step %-14s running", name)
        t0 = time.perf_counter()
        outputs = fn(folder)
        seconds = time.perf_counter() - t0
        record.update(status="done", seconds=round(seconds, 3), outputs=outputs, versions=versions())
        atomic_write_json(state_path, record)
        info = StepInfo(name, key, True, seconds, outputs)
        self.infos[name] = info
        return info


def _claim_run_dir(run_dir: Path, identity: dict, overwrite: bool, protected: list[Path]) -> None:
    """Refuse a folder holding another run or foreign files, unless overwrite (which clears
    only mint's own step folders and run files)."""
    run_file = run_dir / RUN_FILE
    problem = None
    if run_file.is_file():
        old = read_json(run_file).get("identity")
        if old != identity:
            diff = sorted(k for k in set(old or {}) | set(identity) if (old or {}).get(k) != identity.get(k))
            problem = (f"{run_dir} holds a different run (differing: {', '.join(diff)}); "
                       "choose another output_dir, or pass --overwrite to replace that run")
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        problem = (f"{run_dir} is not empty and was not made by `mint run`; choose another output_dir, "
                   "or pass --overwrite to write into it (only mint's own step folders get replaced)")
    if problem and not overwrite:
        raise MintError(problem)
    if problem:
        for p in protected:
            for d in STEP_DIRS:
                if (run_dir / d).resolve() in p.resolve().parents:
                    raise MintError(f"{p} lies inside {run_dir / d}, which --overwrite would delete; move it first")
        log.warning("--overwrite: replacing the run in %s", run_dir)
        for d in STEP_DIRS:
            shutil.rmtree(run_dir / d, ignore_errors=True)
        for f in RUN_FILES:
            (run_dir / f).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not run_file.is_file():
        atomic_write_json(run_file, {"identity": identity, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     "versions": versions()})


def _lora(cfg: RunConfig):
    from mint.model.modeling import LoraSettings

    tm = tuple(cfg.lora.target_modules) if cfg.lora.target_modules else None
    return LoraSettings(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, target_modules=tm)


def _check_eval_schema(train_path: Path, eval_path: Path) -> None:
    from mint.model.data import detect_schema
    from mint.records import read_records

    a, b = detect_schema(read_records(train_path)[0]), detect_schema(read_records(eval_path)[0])
    if a != b:
        raise MintError(f"the evaluation file {eval_path} is in the {b} schema but the training data {train_path} "
                        f"is {a}; convert one of them so both use the same schema")


def run_pipeline(cfg: RunConfig, *, overwrite: bool = False) -> PipelineResult:
    """Run (or resume) every step of `cfg` in `cfg.output_dir`; returns what ran and the metrics."""
    cfg.validate()
    # OpenMP threads that spin while waiting make a busy machine several times slower (measured
    # 8x with 2 threads on a shared 2-core box); passive waiting costs little on an idle one.
    # Only effective when torch is not imported yet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.output_dir)
    user_files = []
    for key, value in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"data file not found: {value} (config key {key})")
        user_files += [Path(value)] if value else []
    identity = {"model": cfg.model.name,
                "train_data": sha256_file(cfg.data.train) if cfg.data.train else f"built-in demo v{DEMO_DATA_VERSION}"}
    _claim_run_dir(run_dir, identity, overwrite, user_files)
    save_config(cfg, run_dir / "config.yaml")
    steps = _Steps(run_dir)
    t_start = time.perf_counter()

    # -- data --------------------------------------------------------------------------------
    def do_data(folder: Path) -> dict:
        if cfg.data.train is None:
            from mint.pipeline.demo_data import write_demo_data

            train, held = write_demo_data(folder, cfg.data.demo_examples, cfg.data.demo_eval_examples)
            return {"train": steps.rel(train), "eval": steps.rel(held), "builtin": True}
        out = {"train": str(Path(cfg.data.train).resolve()), "builtin": False,
               "eval": str(Path(cfg.data.eval).resolve()) if cfg.data.eval else None}
        if cfg.data.eval:
            _check_eval_schema(Path(cfg.data.train), Path(cfg.data.eval))
        return out

    if cfg.data.train is None:
        data_inputs = {"demo": DEMO_DATA_VERSION, "n_train": cfg.data.demo_examples,
                       "n_eval": cfg.data.demo_eval_examples}
    else:
        data_inputs = {"train": str(cfg.data.train), "train_sha256": identity["train_data"],
                       "eval": str(cfg.data.eval), "eval_sha256": sha256_file(cfg.data.eval) if cfg.data.eval else None}
    data = steps.run("data", data_inputs, do_data)
    builtin = data.outputs["builtin"]
    train_path = steps.abs(data.outputs["train"]) if builtin else Path(data.outputs["train"])
    eval_path = None
    if data.outputs.get("eval"):
        eval_path = steps.abs(data.outputs["eval"]) if builtin else Path(data.outputs["eval"])
    from mint.records import read_records

    n_records = len(read_records(train_path))
    # how records become token ids: the same for every step that reads data
    text = {"schema": cfg.data.schema, "template": cfg.data.template, "max_length": cfg.data.max_length,
            "long_prompts": cfg.data.long_prompts}
    render = dict(text)
    # the training file's own hash, not the data step's key: a new held-out file redoes only the evaluations
    common = {"model": cfg.model.name, "train_sha256": sha256_file(train_path), "render": render, "seed": cfg.seed}
    lora = _lora(cfg)

    # -- warm-up -----------------------------------------------------------------------------
    def do_warmup(folder: Path) -> dict:
        from mint.model.warmup import run_warmup

        run_warmup(cfg.model.name, train_path, folder, sample_ratio=cfg.warmup.sample_ratio,
                   epochs=cfg.warmup.epochs, lr=cfg.warmup.lr, batch_size=cfg.warmup.batch_size,
                   grad_accum=cfg.warmup.grad_accum, lora=lora, seed=cfg.seed, device=cfg.model.device,
                   dtype=cfg.model.dtype, **text)
        return {"dir": steps.rel(folder)}

    warm = steps.run("warmup", {**common, "lora": asdict(cfg.lora), "warmup": asdict(cfg.warmup),
                                "device": cfg.model.device, "dtype": cfg.model.dtype}, do_warmup)

    # -- gradient features -------------------------------------------------------------------
    def do_grads(folder: Path) -> dict:
        from mint.model.gradients import compute_features

        compute_features(cfg.model.name, train_path, steps.abs(warm.outputs["dir"]), folder,
                         proj_dim=cfg.grads.proj_dim, grad_type=cfg.grads.grad_type,
                         batch_size=cfg.grads.batch_size, seed=cfg.seed, device=cfg.model.device, **text)
        return {"dir": steps.rel(folder)}

    grads = steps.run("grads", {"warmup": warm.key, "grads": asdict(cfg.grads), "render": render,
                                "seed": cfg.seed}, do_grads)

    # -- selection ---------------------------------------------------------------------------
    def do_select(folder: Path) -> dict:
        from mint.pipeline.select_step import run_selection

        s = cfg.selection
        result = run_selection(steps.abs(grads.outputs["dir"]), folder, ratios=s.ratios, method=s.method,
                               alpha=s.alpha, alpha_method=s.alpha_method, coef=s.coef,
                               preheat_ratio=s.preheat_ratio, seed=cfg.seed, data=train_path, overwrite=True)
        return {"dir": steps.rel(folder), "alpha": getattr(result, "alpha", None)}

    select = steps.run("select", {"grads": grads.key, "selection": asdict(cfg.selection), "seed": cfg.seed},
                       do_select)
    select_dir = steps.abs(select.outputs["dir"])

    def do_export(folder: Path) -> dict:
        from mint.pipeline.export import export_coreset

        out = export_coreset(train_path, select_dir, folder)
        return {"dir": steps.rel(folder), "ratios": sorted(out)}

    steps.run("export", {"select": select.key}, do_export)

    # -- training ----------------------------------------------------------------------------
    from mint.pipeline.export import find_coresets, load_coreset, same_ratio

    ratio = cfg.train_ratio()
    found = find_coresets(select_dir)
    match = [r for r in found if same_ratio(r, ratio)]
    if not match:
        raise MintError(f"no coreset for train.ratio {ratio} in {select_dir}; it has {sorted(found)}")
    indices, weights = load_coreset(found[match[0]], n_records)
    k = len(indices)
    t = cfg.train
    train_settings = {"epochs": t.epochs, "lr": t.lr, "batch_size": t.batch_size, "grad_accum": t.grad_accum}
    train_common = {**common, "lora": asdict(cfg.lora), "train": train_settings,
                    "device": cfg.model.device, "dtype": cfg.model.dtype}

    def trainer(idx, w, weighting) -> Callable[[Path], dict]:
        def do_train(folder: Path) -> dict:
            from mint.model.train import train_lora

            out = train_lora(cfg.model.name, train_path, folder, indices=idx, weights=w, weighting=weighting,
                             epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, grad_accum=t.grad_accum,
                             lora=lora, seed=cfg.seed, device=cfg.model.device, dtype=cfg.model.dtype,
                             overwrite=True, **text)
            return {"adapter": steps.rel(Path(out) / "adapter"),
                    "n_train": len(idx) if idx is not None else n_records}
        return do_train

    trained: dict[str, StepInfo] = {}
    trained["coreset"] = steps.run(
        "train_coreset", {**train_common, "select": select.key, "ratio": ratio, "weighting": t.weighting},
        trainer(indices, weights, t.weighting))
    if t.random_baseline:
        from mint.model.warmup import random_subset_indices

        # the same subset as `mint train --random RATIO`, from a stream apart from the warm-up sample's
        rand_idx = random_subset_indices(n_records, ratio, cfg.seed)
        trained["random"] = steps.run("train_random", {**train_common, "n": n_records,
                                                       "indices_sha256": sha256_bytes(rand_idx.tobytes())},
                                      trainer(rand_idx, None, "none"))
    if t.full_baseline:
        trained["full"] = steps.run("train_full", {**train_common, "n": n_records}, trainer(None, None, "none"))

    # -- evaluation --------------------------------------------------------------------------
    metrics: dict[str, dict] = {}
    if eval_path is not None:
        e = cfg.eval
        eval_inputs = {"model": cfg.model.name, "eval_data": sha256_file(eval_path), "render": render,
                       "eval": {k2: v for k2, v in asdict(e).items() if k2 != "base"},
                       "device": cfg.model.device, "dtype": cfg.model.dtype}
        labels = (["base"] if e.base else []) + list(trained)
        loaded: list[Any] = []  # the base model, loaded once for every evaluation that runs

        def evaluator(label: str) -> Callable[[Path], dict]:
            def do_eval(folder: Path) -> dict:
                from mint.model.evaluate import evaluate
                from mint.model.modeling import load_model_and_tokenizer

                if not loaded:
                    loaded.append(load_model_and_tokenizer(cfg.model.name, device=cfg.model.device,
                                                           dtype=cfg.model.dtype))
                adapter = steps.abs(trained[label].outputs["adapter"]) if label != "base" else None
                evaluate(cfg.model.name, eval_path, adapter=adapter, output_dir=folder, batch_size=e.batch_size,
                         generate=e.generate, max_new_tokens=e.max_new_tokens, generate_limit=e.generate_limit,
                         model_and_tokenizer=loaded[0], **text)
                return {"metrics": steps.rel(folder / "metrics.json")}
            return do_eval

        for label in labels:
            upstream = trained[label].key if label != "base" else None
            info = steps.run(f"eval/{label}", {**eval_inputs, "adapter_step": upstream}, evaluator(label))
            metrics[label] = read_json(steps.abs(info.outputs["metrics"]))
    else:
        log.warning("no held-out file (data.eval): evaluation skipped")

    from mint.pipeline.report import write_report

    total = time.perf_counter() - t_start
    report = write_report(run_dir, cfg, steps.infos, metrics, select_dir=select_dir, n_records=n_records,
                          train_ratio=ratio, k=k, eval_path=eval_path, wall_seconds=total)
    return PipelineResult(run_dir, dict(steps.infos), metrics, report)
