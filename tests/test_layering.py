"""The dependency rules of docs/architecture.md, checked on the source (mint.selection's own rules
are in tests/selection/test_boundaries.py):

- `mint.model` never imports `mint.pipeline` or `mint.commands`;
- `mint.pipeline` never imports `mint.commands`;
- the shared modules (errors, _io, _folders, records, sources, choices) import no mint package
  (but each other) and nothing heavier than numpy at import time (sources reads parquet and
  datasets folders with pyarrow and datasets imported inside its functions);
- `import mint`, `mint.records` and `mint.model.store` (read features) load no torch.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mint"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                pkg = ".".join(("mint", *path.relative_to(SRC).parent.parts))
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def _offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    files = [SRC / f"{package}.py"] if (SRC / f"{package}.py").is_file() else sorted((SRC / package).rglob("*.py"))
    for f in files:
        bad = sorted(n for n in _imports(f) if any(n == b or n.startswith(b + ".") for b in forbidden))
        if bad:
            out[str(f.relative_to(SRC))] = bad
    return out


@pytest.mark.parametrize("package,forbidden", [
    ("model", ("mint.pipeline", "mint.commands", "mint.cli")),
    ("pipeline", ("mint.commands", "mint.cli")),
    ("selection", ("mint.pipeline", "mint.model", "mint.commands", "torch", "transformers", "matplotlib")),
    ("errors", ("mint.selection", "mint.model", "mint.pipeline", "mint.commands", "torch", "transformers")),
    ("_io", ("mint.selection", "mint.model", "mint.pipeline", "mint.commands", "torch", "transformers")),
    ("records", ("mint.selection", "mint.model", "mint.pipeline", "mint.commands", "torch", "transformers")),
    ("sources", ("mint.selection", "mint.model", "mint.pipeline", "mint.commands", "torch", "transformers")),
    ("choices", ("mint.selection", "mint.model", "mint.pipeline", "mint.commands", "numpy", "torch")),
    ("_folders", ("mint.selection", "mint.model", "mint.pipeline", "mint.commands", "numpy", "torch")),
])
def test_dependency_rules(package, forbidden):
    assert not _offenders(package, forbidden)


def test_the_checker_sees_imports(tmp_path):
    """The rule above can fail: a relative or absolute import of a forbidden module is found."""
    f = SRC / "model" / "modeling.py"
    assert "mint.errors" in _imports(f)
    probe = tmp_path / "probe.py"
    probe.write_text("from mint.pipeline.config import RunConfig\n")
    assert "mint.pipeline.config" in _imports(probe)


def test_light_imports_load_no_torch():
    code = ("import sys, mint, mint.records, mint.model.store, mint.choices\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
