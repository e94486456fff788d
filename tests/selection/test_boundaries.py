"""The selection engine stays numpy only: importing and running it loads neither the model stack
(torch, transformers), plotting, nor the pipeline; and no file of it imports them."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import mint.selection

FORBIDDEN = ("torch", "transformers", "matplotlib", "mint.pipeline", "mint.model")
SELECTION_DIR = Path(mint.selection.__file__).resolve().parent

_RUN = """
import json, sys
import numpy as np
import mint.selection
from mint.selection import select_coreset
rng = np.random.default_rng(0)
feats = {}
for kind in ("sft", "pt", "ifl"):
    X = rng.normal(size=(30, 6)).astype(np.float32)
    feats[kind] = X / np.linalg.norm(X, axis=1, keepdims=True)
res = select_coreset(feats, ratios=[0.1, 0.2], n_jobs=1, progress=False)
craig = select_coreset(feats, ratios=[0.1], method="craig", progress=False)
assert len(res.order) == 6 and len(craig.order) == 3
print(json.dumps(sorted(sys.modules)))
"""


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


def test_importing_and_running_the_engine_loads_no_heavy_module():
    proc = subprocess.run([sys.executable, "-c", _RUN], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "mint.selection.core" in modules  # the check ran where it should
    assert [m for m in modules if _forbidden(m)] == []


def _imports(path: Path) -> list[str]:
    """Every module an `import` in the file names (absolute; `from mint import model` gives
    `mint.model`)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this package
                base = ".".join(["mint", "selection"][: max(0, 2 - (node.level - 1))])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]
    return names


def test_no_selection_file_imports_the_model_stack_or_the_pipeline():
    files = sorted(SELECTION_DIR.glob("*.py"))
    assert {"core.py", "distances.py", "facility.py", "alpha.py"} <= {f.name for f in files}
    bad = {f.name: [m for m in _imports(f) if _forbidden(m)] for f in files}
    assert {name: mods for name, mods in bad.items() if mods} == {}


def test_the_engine_reads_no_machine_state():
    # the memory limit is the caller's (mint.pipeline.select_step reads /proc/meminfo)
    for f in sorted(SELECTION_DIR.glob("*.py")):
        text = f.read_text()
        assert "/proc/" not in text and "meminfo" not in text, f.name


def test_importing_the_engine_does_not_import_numba():
    # the compiled kernels are imported (and compiled, or loaded from numba's cache) on first use
    code = "import sys, mint, mint.selection; from mint import select_coreset; print('numba' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
