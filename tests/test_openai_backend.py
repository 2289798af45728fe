"""The openai backend's requests, through the real `openai` client, against a local HTTP endpoint that records
what it receives and answers like a chat-completions server (the live vLLM server check is
scripts/check_openai_server.py: it takes minutes to start on 2 cores)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from survlm.modeling.backends import BackendSettings, Decoding, make_backend

pytest.importorskip("openai")


@pytest.fixture
def endpoint():
    received, failures = [], {"left": 1}  # the first request fails with 500: the backend must retry it

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if failures["left"]:
                failures["left"] -= 1
                self.send_response(500)
                self.end_headers()
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
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", received
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


def test_openai_backend_rejects_an_unknown_constraint(tiny_llama_dir, schema):
    with pytest.raises(ValueError, match="openai_constraint"):
        make_backend("openai", tiny_llama_dir, {}, schema, BackendSettings(openai_constraint="regex"))
