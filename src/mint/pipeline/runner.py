"""`mint run`: the whole MINT pipeline from one config, resumable step by step (the steps
themselves are in `mint.pipeline.steps`; this module runs them in a run folder).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mint._io import array_problem, atomic_write_json, read_json, sha256_bytes, versions
from mint._folders import BOOKKEEPING, check_writable, own_entries
from mint.model.distributed import barrier, process_group
from mint.records import source_format
from mint.pipeline.config import RunConfig, save_config
from mint.errors import MintError

__all__ = ["run_pipeline", "Run", "PipelineResult", "StepInfo", "STEPS_DIR", "RUN_FILE", "read_step"]

log = logging.getLogger(__name__)

STEPS_DIR = "steps"
RUN_FILE = "run.json"
# Folders and files a run creates; --overwrite clears only these, never anything else.
STEP_DIRS = (STEPS_DIR, "data", "warmup", "grads", "select", "export", "train_coreset", "train_random",
             "train_full", "eval")
RUN_FILES = (RUN_FILE, "config.yaml", "report.md", "summary.json", "training_loss.png")


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


class Run:
    """Runs steps in a run folder, skipping those whose key matches a finished record."""

    def __init__(self, run_dir: Path, *, rank: int = 0, world: int = 1, dist=None):
        self.run_dir = run_dir
        self.infos: dict[str, StepInfo] = {}
        self.rank, self.world, self.dist = rank, world, dist  # a torchrun job: rank 0 keeps the records

    def rel(self, path: Path | str) -> str:
        return os.path.relpath(Path(path), self.run_dir)

    def abs(self, rel: str) -> Path:
        return self.run_dir / rel

    def step(self, name: str, inputs: dict, fn: Callable[[Path], dict], *, every_rank: bool = False) -> StepInfo:
        """Run ``fn(folder)`` unless the step's record carries ``inputs``' key and its outputs are
        intact. Under torchrun rank 0 decides, clears and records; ``fn`` runs on every rank when
        ``every_rank`` (a step that splits its work over the ranks), else on rank 0 while the
        others wait; every rank returns the recorded outputs."""
        if self.world > 1 and self.rank != 0:
            return self._follow(name, _key(inputs), fn if every_rank else None)
        return self._lead(name, inputs, fn)

    def _follow(self, name: str, key: str, fn: Callable[[Path], dict] | None) -> StepInfo:
        """A rank other than 0: rank 0's decision and outputs, read from the step's record."""
        barrier(self.dist)  # rank 0 has decided, cleared and recorded "running" or found it done
        state = read_json(_step_path(self.run_dir, name))
        ran = state.get("status") != "done" or state.get("key") != key
        if ran:
            if fn is not None:
                fn(self.run_dir / name)
            barrier(self.dist)  # rank 0 has recorded the outputs
            state = read_json(_step_path(self.run_dir, name))
        info = StepInfo(name, key, ran, float(state.get("seconds", 0.0)), state.get("outputs", {}))
        self.infos[name] = info
        return info

    def _lead(self, name: str, inputs: dict, fn: Callable[[Path], dict]) -> StepInfo:
        folder = self.run_dir / name
        key = _key(inputs)
        state_path = _step_path(self.run_dir, name)
        state = read_json(state_path) if state_path.is_file() else None
        if state and state.get("key") == key and state.get("status") == "done":
            problem = _damaged(folder, state.get("files") or {})
            if problem is None:
                info = StepInfo(name, key, False, float(state.get("seconds", 0.0)), state.get("outputs", {}))
                log.info("step %-14s up to date, skipped", name)
                self.infos[name] = info
                barrier(self.dist)  # the other ranks read the record
                return info
            log.warning("step %-14s redone: %s; clearing %s", name, problem, folder)
            shutil.rmtree(folder, ignore_errors=True)
        elif state is not None and state.get("key") != key and folder.exists():
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
        barrier(self.dist)  # the other ranks read the record and start (or wait)
        t0 = time.perf_counter()
        outputs = fn(folder)
        seconds = time.perf_counter() - t0
        record.update(status="done", seconds=round(seconds, 3), outputs=outputs, versions=versions(),
                      files=_output_files(folder))
        atomic_write_json(state_path, record)
        barrier(self.dist)
        info = StepInfo(name, key, True, seconds, outputs)
        self.infos[name] = info
        return info


def _output_files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file a step left in its folder (temporary dot-files and the
    logs of a command run there, e.g. `mint grads` under torchrun, aside)."""
    if not folder.is_dir():
        return {}
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] not in BOOKKEEPING and not any(p.startswith(".") for p in rel.parts):
            files[rel.as_posix()] = path.stat().st_size
    return files


def _damaged(folder: Path, files: dict[str, int]) -> str | None:
    """Why the recorded outputs of a finished step cannot be trusted (None: each one is there with
    its recorded size, and arrays have whole headers). Records without `files` are trusted."""
    for rel, size in files.items():
        path = folder / rel
        if not path.is_file():
            return f"its output {path} is missing"
        found = path.stat().st_size
        if found != size:
            return f"its output {path} has {found} bytes, but the step wrote {size}"
        problem = array_problem(path)
        if problem:
            return f"its output {path} {problem}"
    return None


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
    elif own_entries(run_dir):
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


def run_pipeline(cfg: RunConfig, *, overwrite: bool = False, log_file: str | os.PathLike | None = None) -> PipelineResult:
    """Run (or resume) every step of `cfg` in `cfg.output_dir`; returns what ran and the metrics.

    Threads, the folder's lock and the log file are the caller's business (`mint run` applies
    `cfg.threads`, holds the lock and writes `log_file`, which the report then links)."""
    from mint.pipeline.report import write_report
    from mint.pipeline.steps import DEMO_DATA_VERSION, STEPS, Context

    cfg.validate()
    run_dir = check_writable(cfg.output_dir, "run folder")
    user_files = []
    for key, value in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
        # files, save_to_disk folders (FOLDER:split too) and hub ids, as mint.sources reads them
        fmt = source_format(value) if value else None
        if value and fmt != "hub" and not (Path(value).is_file() or fmt == "dataset_folder"):
            raise FileNotFoundError(f"data file not found: {value} (config key {key})")
        user_files += [Path(value)] if value else []
    rank, world, dist = process_group()  # torchrun: every rank runs the steps; rank 0 writes the records
    run = Run(run_dir, rank=rank, world=world, dist=dist)
    ctx = Context(cfg, run)
    identity = {"model": cfg.model.name,
                "train_data": ctx.sha(cfg.data.train) if cfg.data.train else f"built-in demo v{DEMO_DATA_VERSION}"}
    if rank == 0:
        _claim_run_dir(run_dir, identity, overwrite, user_files)
        save_config(cfg, run_dir / "config.yaml")
    barrier(dist)
    t_start = time.perf_counter()
    for _name, step in STEPS:
        step(ctx)
    report = run_dir / "report.md"
    if rank == 0:
        report = write_report(run_dir, cfg, run.infos, ctx.metrics, select_dir=ctx.select_dir,
                              n_records=ctx.n_records, train_ratio=ctx.coreset["ratio"], k=ctx.coreset["k"],
                              eval_path=ctx.eval_path, wall_seconds=time.perf_counter() - t_start, log_file=log_file)
    barrier(dist)
    return PipelineResult(run_dir, dict(run.infos), ctx.metrics, report)
