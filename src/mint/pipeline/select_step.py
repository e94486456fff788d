"""`mint select` as a step: read features from a folder, run `mint.selection.select_coreset`, and
write every output (coresets, curve, plots, summary) atomically."""
from __future__ import annotations

import logging
import shutil
import time
from typing import Sequence

import numpy as np

from mint._io import array_problem, atomic_write_text
from mint._folders import check_writable, own_entries
from mint.choices import FEATURE_KINDS as KINDS
from mint.errors import MintError
from mint.model.distributed import barrier, process_group
from mint.pipeline.coresets import coreset_file, save_coreset
from mint.selection import alpha as alpha_mod
from mint.selection.core import SelectionResult, select_coreset
from mint.selection.facility import GAIN_SUM
from mint.selection.validation import check_ratios, check_settings

__all__ = ["run_selection", "load_feature_dir", "summary_text", "available_bytes"]

logger = logging.getLogger(__name__)

_OUR_FILES = ("run.json", "summary.json", "summary.txt", "selection.npz", "alpha_curve.csv", "pareto.png", "plateau.png")


def load_feature_dir(features_dir) -> tuple[dict, dict]:
    """Features for selection from a folder: the gradient step's store (`manifest.json`, read
    with `mint.model.store.load_features`) or plain `{sft,pt,ifl}.npy` files (rows normalised here if
    they are not already). Returns (features, provenance)."""
    from pathlib import Path

    from mint._io import sha256_file

    path = Path(features_dir)
    if path.is_file():
        raise MintError(f"{path} is a file, not a features folder; pass the output folder of `mint grads` (or a "
                        "folder holding sft.npy, pt.npy, ifl.npy) with --features")
    if not path.is_dir():
        raise MintError(f"{path}: features folder not found; pass the output folder of `mint grads` with --features")
    if (path / "manifest.json").is_file():
        from mint.model.store import load_features, read_manifest

        features = load_features(path, normalized=True)
        manifest = read_manifest(path)
        store_settings = manifest.get("settings", {})
        prov = {"source": "feature store", "path": str(path), "manifest_sha256": sha256_file(path / "manifest.json"),
                "data_fingerprint": store_settings.get("data_fingerprint"),
                "data_sha256": store_settings.get("data_sha256")}
        return dict(features), prov
    files = {k: path / f"{k}.npy" for k in KINDS if (path / f"{k}.npy").is_file()}
    if not files:
        raise MintError(f"{path}: neither a feature store (manifest.json) nor sft.npy/pt.npy/ifl.npy; "
                        "run `mint grads` first or point --features at its output folder")
    features = {}
    for kind, file in files.items():
        problem = array_problem(file)
        if problem:
            raise MintError(f"{file} {problem}; write the (N, D) array of its kind there again (or rerun "
                            "`mint grads` and pass its folder)")
        try:
            X = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            raise MintError(f"{file}: not a readable .npy array ({e}); write it again with numpy.save") from e
        features[kind] = _normalised(X, file)
    prov = {"source": "npy files", "path": str(path), "sha256": {k: sha256_file(f) for k, f in files.items()}}
    return features, prov


def _normalised(X, file):
    if X.ndim != 2:
        raise MintError(f"{file}: expected a 2-D (N, D) array, found shape {X.shape}")
    norms = np.concatenate([np.linalg.norm(np.asarray(X[s : s + 4096], dtype=np.float64), axis=1)
                            for s in range(0, X.shape[0], 4096)]) if X.shape[0] else np.zeros(0)
    if np.all((np.abs(norms - 1) < 1e-3) | (norms == 0) | ~np.isfinite(norms)):
        return X
    logger.info("%s: rows are not L2-normalised; normalising them for selection", file)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.asarray(X, dtype=np.float32) / np.where(norms == 0, 1, norms)[:, None].astype(np.float32))


def _prepare_output(out, run_key: str, overwrite: bool) -> None:
    from mint._io import read_json

    out.mkdir(parents=True, exist_ok=True)
    entries = [p for p in own_entries(out) if not p.name.startswith(".")]
    if not entries:
        return
    marker = out / "run.json"
    try:
        same = marker.is_file() and read_json(marker).get("run_key") == run_key
    except (OSError, ValueError, AttributeError):
        same = False  # an unreadable marker is treated as a different run
    if same:
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} is not empty and holds {'a different selection run' if marker.is_file() else 'other files'}; "
            "choose a new --output_dir, or pass --overwrite to replace the previous selection outputs"
        )
    for p in entries:  # only our own outputs are removed; anything else in the folder stays
        if p.name in _OUR_FILES or (p.name.startswith("coreset_") and p.suffix in (".npz", ".jsonl")):
            p.unlink()
        elif p.name == PARTS_DIR and p.is_dir():
            shutil.rmtree(p)


PARTS_DIR = "parts"  # finished parts of a partitioned selection, removed once the selection is written


class PartFolder:
    """Finished parts of a partitioned selection as files (`parts/part_00003.npz`, written
    atomically), for `select_coreset(part_cache=...)`: a rerun of an interrupted `mint select`
    with the same settings resumes at the part where it stopped. A file whose fingerprint differs
    (other rows, sizes or settings) is ignored and replaced."""

    def __init__(self, folder, *, rank: int = 0, world: int = 1, dist=None):
        from pathlib import Path

        self.folder = Path(folder)
        self.rank, self.world, self.dist = rank, world, dist
        if world > 1:  # torchrun: part p is computed by rank p % world, all read every part after sync
            self.mine = lambda part: part % world == rank
            self.sync = self._sync

    def _sync(self) -> None:
        from mint.model.distributed import barrier

        barrier(self.dist)

    def _file(self, part: int):
        return self.folder / f"part_{part:05d}.npz"

    def get(self, part: int, fingerprint: str):
        import json

        from mint.selection.partition import PartResult

        file = self._file(part)
        if not file.is_file():
            return None
        try:
            with np.load(file, allow_pickle=False) as z:
                if str(z["fingerprint"]) != fingerprint:
                    return None
                weights = {int(k.split("_", 1)[1]): z[k] for k in z.files if k.startswith("weights_")}
                errors = {kind: {int(m): v for m, v in by.items()} for kind, by in json.loads(str(z["errors"])).items()}
                return PartResult(z["order"], z["gains"], weights, errors)
        except (OSError, ValueError, KeyError) as e:  # a damaged file: compute the part again
            logger.warning("%s is unreadable (%s); computing that part again", file, e)
            return None

    def put(self, part: int, fingerprint: str, result) -> None:
        import json

        from mint._io import atomic_save_npz

        arrays = {f"weights_{m}": w for m, w in result.weights.items()}
        atomic_save_npz(self._file(part), order=result.order, gains=result.gains, fingerprint=np.array(fingerprint),
                        errors=np.array(json.dumps(result.errors, sort_keys=True)), **arrays)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, the default limit of `mint select` (None where unreadable)."""
    from mint._io import available_memory

    return available_memory()


# over 60 lines only through its signature and docstring; the body is about 40
def run_selection(
    features_dir,
    output_dir,
    *,
    ratios: Sequence[float] = (0.05,),
    method: str = "mint",
    alpha: float | None = None,
    alpha_method: str = "plateau",
    coef: Sequence[float] | None = None,
    preheat_ratio: float = 0.3,
    preheat_max: int = 10_000,
    strategy: str = "auto",
    partition_size: int = 20_000,
    partition: str = "random",
    second_round: bool = False,
    seed: int = 0,
    data=None,
    overwrite: bool = False,
    dtype: str = "float32",
    n_jobs: int | None = None,
    engine: str = "auto",
    plateau_min_alpha: float = alpha_mod.PLATEAU_MIN_ALPHA,
    golden_tol: float = 1e-3,
    golden_max_iter: int = 40,
    max_memory_gb: float | None = None,
    cache_distances: bool | None = None,
    progress: bool = True,
) -> SelectionResult:
    """`mint select`: read features from `features_dir`, select, and write to `output_dir`:
    coreset_{ratio:.2f}.npz (indices, weights, n, data_sha256; see `mint.pipeline.coresets`),
    coreset_{ratio:.2f}.jsonl when `data` is given, selection.npz (order, gains),
    alpha_curve.csv, pareto.png, plateau.png (automatic alpha only), summary.json (which lists
    the coresets) and summary.txt. Every file is written atomically; summary.json last.
    max_memory_gb: refuse above this estimate (None: the memory available now). engine: the exact
    engine's kernels (`mint.selection.engine`); not part of the run key, since it does not change the
    selection."""
    import hashlib
    import json
    from pathlib import Path

    from mint._io import atomic_write_json

    t0 = time.perf_counter()
    out = Path(output_dir)
    ratio_list = check_ratios(ratios)
    names = [coreset_file(r) for r in ratio_list]
    if len(set(names)) != len(names):
        raise MintError(f"ratios {ratio_list} give the same file name at two decimals; use ratios that differ by >= 0.01")
    check_settings(method, alpha, alpha_method, coef, preheat_ratio, dtype)
    check_writable(out)
    features, inputs = load_feature_dir(features_dir)
    records, data_prov = _read_data(data, features, inputs, features_dir)
    settings = {
        "method": method, "alpha": alpha, "alpha_method": alpha_method, "coef": list(coef) if coef is not None else None,
        "ratios": ratio_list, "preheat_ratio": preheat_ratio, "preheat_max": preheat_max, "strategy": strategy,
        "partition_size": partition_size, "seed": seed, "dtype": str(np.dtype(dtype)),
        "plateau_min_alpha": plateau_min_alpha, "golden_tol": golden_tol, "golden_max_iter": golden_max_iter,
        "gain_sum": GAIN_SUM,  # the gains' summation order: a new one may change selections on near-ties
    }
    if partition != "random":  # recorded only when set, so earlier runs keep their run key
        settings["partition"] = partition
    if second_round:
        settings["second_round"] = True
    run_key = hashlib.sha256(json.dumps({"settings": settings, "inputs": inputs, "data": data_prov},
                                        sort_keys=True).encode()).hexdigest()
    rank, world, dist = process_group()  # under torchrun the parts are spread over the ranks; rank 0 writes
    if rank == 0:
        _prepare_output(out, run_key, overwrite)
        atomic_write_json(out / "run.json", {"run_key": run_key, "settings": settings, "inputs": inputs,
                                             "data": data_prov})
    barrier(dist)
    limit = int(max_memory_gb * (1 << 30)) if max_memory_gb is not None else available_bytes()
    res = select_coreset(
        features, ratios=ratio_list, method=method, alpha=alpha, alpha_method=alpha_method, coef=coef,
        preheat_ratio=preheat_ratio, seed=seed, dtype=dtype, n_jobs=n_jobs, engine=engine,
        plateau_min_alpha=plateau_min_alpha,
        golden_tol=golden_tol, golden_max_iter=golden_max_iter, memory_limit_bytes=limit,
        cache_distances=cache_distances, strategy=strategy, partition_size=partition_size, partition=partition,
        second_round=second_round, preheat_max=preheat_max,
        part_cache=PartFolder(out / PARTS_DIR, rank=rank, world=world, dist=dist), progress=progress and rank == 0,
    )
    if rank == 0:
        # the data file the coresets index into, recorded in every coreset file ("" when unknown)
        data_sha256 = data_prov["sha256"] if data_prov else inputs.get("data_sha256") or ""
        files = _write_outputs(out, res, ratio_list, records, data_sha256)
        timings = {"wall_s": time.perf_counter() - t0}  # stage times are in the log, not in the result
        summary = _summary(res, ratio_list, settings, inputs, data_prov, run_key, timings, files)
        atomic_write_text(out / "summary.txt", summary_text(summary))
        atomic_write_json(out / "summary.json", summary)
    barrier(dist)  # every rank has read the parts before they go
    if rank == 0:
        PartFolder(out / PARTS_DIR).remove()
    return res


def _read_data(data, features, inputs: dict, features_dir) -> tuple[list | None, dict | None]:
    """(records, provenance) of the data file the features came from, checked against them."""
    if data is None:
        return None, None
    from mint.records import read_records, source_sha256

    n = np.shape(next(iter(features.values())))[0]
    records = read_records(data)
    if len(records) != n:
        raise MintError(f"{data} has {len(records)} records but the features in {features_dir} describe {n} "
                        "examples; pass the data file the features were computed from")
    data_prov = {"path": str(data), "sha256": source_sha256(data), "records": len(records)}
    if inputs.get("data_sha256") and inputs["data_sha256"] != data_prov["sha256"]:
        raise MintError(f"{data} is not the file the features in {features_dir} were computed from "
                        "(its sha256 differs from the one in their manifest); pass that file with --data")
    return records, data_prov


def _write_outputs(out, res: SelectionResult, ratio_list: list[float], records, data_sha256: str) -> list[str]:
    """Coresets (and their records), the greedy order, the alpha curve and plots; the file names."""
    from mint._io import atomic_save_npz, atomic_write_bytes

    files = []
    for r in ratio_list:
        sub = res.subsets[r]
        save_coreset(out / coreset_file(r), sub.indices, sub.weights, n=res.n, data_sha256=data_sha256)
        files.append(coreset_file(r))
        if records is not None:
            from mint.pipeline.export import export_subset

            export_subset(records, sub.indices, sub.weights, out / coreset_file(r, "jsonl"))
            files.append(coreset_file(r, "jsonl"))
    atomic_save_npz(out / "selection.npz", order=res.order, gains=res.gains)
    files.append("selection.npz")
    if res.curve is not None:
        from mint.pipeline import plots

        atomic_write_text(out / "alpha_curve.csv", res.curve.to_csv())
        atomic_write_bytes(out / "pareto.png", plots.pareto_png(res.curve))
        atomic_write_bytes(out / "plateau.png", plots.plateau_png(res.curve))
        files += ["alpha_curve.csv", "pareto.png", "plateau.png"]
    return files


def _summary(res: SelectionResult, ratio_list, settings, inputs, data_prov, run_key, timings, files) -> dict:
    from mint._io import versions

    return {
        "method": res.method, "alpha": res.alpha, "alpha_method": res.alpha_method, "coef": res.coef, "n": res.n,
        "seed": res.seed, "dtype": settings["dtype"], "distance_strategy": res.settings["distance_strategy"],
        "subsets": [
            {"ratio": r, "k": int(len(res.subsets[r].indices)), "file": coreset_file(r),
             "e_pt": res.subsets[r].e_pt, "e_ifl": res.subsets[r].e_ifl,
             "weight_sum": float(res.subsets[r].weights.sum()), "max_weight": float(res.subsets[r].weights.max())}
            for r in ratio_list
        ],
        "alpha_search": None if res.curve is None else {
            "method": res.curve.method, "chosen": res.curve.chosen, "reason": res.curve.reason,
            "points": len(res.curve), "n_pre": res.curve.n_pre, "k_pre": res.curve.k_pre, "sigma": res.curve.sigma,
        },
        "settings": settings, "inputs": inputs, "data": data_prov, "versions": versions(), "run_key": run_key,
        "timings": {k: round(v, 3) for k, v in timings.items()}, "files": files + ["summary.txt", "summary.json"],
    }


def summary_text(summary: dict) -> str:
    """A few human-readable lines about a selection (also printed by `mint select`)."""
    if summary["alpha"] is not None:
        how = f"alpha = {summary['alpha']:g}"
        if summary["alpha_search"]:
            s = summary["alpha_search"]
            how += f" ({s['method']} over {s['points']} alphas on a pre-sample of {s['n_pre']}: {s['reason']})"
    elif summary["coef"] is not None:
        how = "coefficients (c_sft, c_pt, c_ifl) = " + ", ".join(f"{c:g}" for c in summary["coef"])
    else:
        how = "no alpha (baseline)"
    lines = [f"method {summary['method']} on N = {summary['n']}: {how}"]
    for s in summary["subsets"]:
        err = ""
        if s["e_pt"] is not None:
            err = f"  E_PT {s['e_pt']:.4g}  E_IFL {s['e_ifl']:.4g}"
        lines.append(f"  ratio {s['ratio']:g}: k = {s['k']}, max weight {s['max_weight']:g}{err}  -> {s['file']}")
    return "\n".join(lines) + "\n"
