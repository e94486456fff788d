"""Which implementation runs the exact engine's inner loops: the compiled kernels
(`mint.selection._compiled`, numba) or numpy. Both give the same bytes (tested); the compiled one
removes the Python step per heap pop of the lazy greedy, which dominates the alpha scan.

`auto` uses the compiled kernels when numba is installed and the matrix has at least
`COMPILED_MIN_ROWS` rows: below that the numpy engine takes milliseconds, less than importing
numba (about half a second) or compiling the kernels the first time on a machine (seconds, then
cached). numba is imported here only when a kernel is first needed, never at `import mint.selection`.
"""
from __future__ import annotations

import importlib.util
import logging

import numpy as np

from mint.choices import SELECTION_ENGINES
from mint.errors import MintError

__all__ = ["COMPILED_MIN_ROWS", "check_engine", "resolve_engine", "kernels", "sum_chunk", "warm_up"]

logger = logging.getLogger(__name__)

# Rows from which `auto` compiles: a 1,000-row scan point takes ~10 ms in numpy.
COMPILED_MIN_ROWS = 1_000
INSTALL_HINT = "pip install numba"

_kernels = None
_ready: set = set()  # dtypes whose kernels this process has compiled or loaded
_warned = False


def check_engine(engine: str) -> str:
    if engine not in SELECTION_ENGINES:
        raise MintError(f"selection engine {engine!r} is not one of {', '.join(SELECTION_ENGINES)}; "
                        "use auto (the default), numba (compiled) or numpy")
    if engine == "numba" and not numba_available():
        raise MintError(f"selection engine 'numba' needs numba, which is not installed: run `{INSTALL_HINT}`, "
                        "or use --engine numpy (the same results, slower)")
    return engine


def numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def resolve_engine(engine: str, n: int) -> str:
    """`numba` or `numpy` for a matrix of n rows."""
    global _warned
    if engine != "auto":
        return engine
    if n < COMPILED_MIN_ROWS:
        return "numpy"
    if numba_available():
        return "numba"
    if not _warned:
        logger.warning("numba is not installed: the selection runs its numpy engine (same results, slower); "
                       "`%s` makes it faster", INSTALL_HINT)
        _warned = True
    return "numpy"


def kernels(dtype):
    """The compiled kernels module, its kernels for `dtype` compiled (or loaded from numba's cache)
    on first use in this process."""
    global _kernels
    if _kernels is None:
        try:
            from mint.selection import _compiled
        except ImportError as e:
            raise MintError(f"the compiled selection engine needs numba: run `{INSTALL_HINT}`, or use --engine numpy "
                            f"(same results, slower); the import failed with: {e}") from e
        _kernels = _compiled
    dtype = np.dtype(dtype)
    if dtype not in _ready:
        _compile(_kernels, dtype)
        _ready.add(dtype)
    return _kernels


def sum_chunk(dtype) -> int:
    """How numpy sums values of `dtype` in float64 (`ndarray.sum(dtype=float64)`): cast in
    buffers of `numpy.getbufsize()` elements, each buffer's pairwise sum added in turn, when the
    values need a cast; in one pairwise range (0) when they are float64 already."""
    return 0 if np.dtype(dtype) == np.float64 else int(np.getbufsize())


def warm_up(dtype) -> None:
    """Compile (or load) every kernel for `dtype` in this process, before worker processes are
    forked, so that they inherit compiled code instead of compiling each."""
    kernels(dtype)


def _compile(k, dtype) -> None:
    """Run every kernel once on a tiny input of `dtype`, which compiles it (or loads it from numba's
    cache). With LLVM's SLP vectorizer on, which numba leaves off by default: it packs the 8
    independent accumulators of numpy's pairwise sum (E(T)) into vector registers. It never
    reorders a floating-point operation, and tests/selection/test_compiled.py checks the kernels
    against numpy bit for bit."""
    from numba.core import config

    slp = config.SLP_VECTORIZE
    config.SLP_VECTORIZE = 1
    try:
        _run_all(k, dtype)
    finally:
        config.SLP_VECTORIZE = slp


def _run_all(k, dtype) -> None:
    d = np.abs(np.arange(16, dtype=dtype).reshape(4, 4) - np.arange(4, dtype=dtype)[:, None])
    d = np.ascontiguousarray(d + d.T)
    S = np.empty_like(d)
    k.alpha_similarity(d, d, d.dtype.type(0.5), d.dtype.type(0.5), S)
    order, _ = k.lazy_greedy(S, 2)
    targets = np.array([1, 2], dtype=np.int64)
    k.prefix_counts(S, order, targets)
    k.prefix_min_sums(d, order, targets, sum_chunk(dtype))
    k.row_gains(S, order, np.zeros(4, dtype=dtype))
