"""The choice lists of every setting that takes one of a few names: one source for the library
functions, the config checks and the command-line parsers (stdlib only, imported everywhere)."""
from __future__ import annotations

SCHEMAS = ("alpaca", "chat", "sharegpt", "prompt_completion")  # record schemas; "auto" detects one of them
ASSISTANT_TURNS = ("all", "last")  # which assistant turns of a conversation are learned
TEMPLATES = ("auto", "chat", "plain")  # prompt rendering
LONG_PROMPTS = ("error", "truncate")  # a prompt that alone fills max_length
DTYPES = ("auto", "float32", "bfloat16", "float16")  # model precision
GRAD_TYPES = ("adam", "sgd", "sign")  # gradient features: Adam-preconditioned, plain, sign
PROJECTIONS = ("rademacher", "gaussian", "sjlt", "trak")  # dense tiles (2), sparse JL, trak's CUDA kernel
METHODS = ("mint", "craig", "pt", "ifl", "random")  # selection methods
ALPHA_METHODS = ("plateau", "plateau_scaled", "golden")  # automatic alpha
WEIGHTINGS = ("loss", "sampling", "none")  # how coreset weights enter training
# transformers' schedulers that need no extra arguments (its `SchedulerType` names)
LR_SCHEDULER_TYPES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                      "inverse_sqrt")
FEATURE_KINDS = ("sft", "pt", "ifl")  # the three gradient features
SELECTION_STRATEGIES = ("auto", "exact", "partitioned")  # one N x N matrix, or parts of bounded size
SELECTION_PARTITIONS = ("random", "kmeans")  # how a partitioned selection splits the rows
SELECTION_ENGINES = ("auto", "numba", "numpy")  # the exact engine's greedy: compiled, or numpy (same bytes)
MATERIALIZE = ("none", "replicate", "resample")  # exports for trainers that ignore weights
DEVICES = "use auto, cpu, cuda, cuda:N (N = a GPU's index) or mps"  # devices are a pattern, not a list


def is_device(name: str) -> bool:
    """Whether `name` is a device string mint accepts (auto, cpu, mps, cuda, cuda:N)."""
    import re

    return bool(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(name)))
STORAGE_DTYPES = ("float32", "float16")  # the normalised features the selection reads
