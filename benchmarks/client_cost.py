"""What a generating stage costs besides the engine: survlm's own work per answer, measured through the `openai`
backend against a stand-in server that answers every request at once with a recorded answer.

The client side is everything `survlm serve` leaves to the stages: planning each note (its tokens, its chunks),
the chat request with the grammar, the HTTP round trip through the OpenAI client with `batch_size` threads, the
answer's token ids and log-probabilities read back and decoded, the answer parsed and checked against its note,
field confidences, and the prediction row written. The notes are those a run answered (`--prepared`), each once;
the stand-in server runs in its own process and returns for each note the answer the run recorded for it
(`--predictions`), with one token id and log-probability per token (the base's own tokenizer), as a vLLM server
does with `return_tokens_as_token_ids`. Its CPU time is reported apart.

  python benchmarks/client_cost.py --prepared data/prepared --predictions data/predictions --base models/base \
      --notes 512 --out benchmarks/results/client_cost_cpu.json

The result holds the wall and CPU seconds of the client for `--notes` notes, per answer, and the server's CPU.
No note text is written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from hf_kv_cache import cpu_description  # noqa: E402


def recorded_answers(prepared: Path, predictions: Path, base: Path, limit: int) -> list[tuple[dict, str]]:
    """(note record, chat-completion response) for the notes a run answered, each with the first answer recorded
    for it (the prediction files in name order), its tokens as the base's tokenizer splits them."""
    from survlm.artifacts import note_of, read_jsonl
    from survlm.modeling.loading import load_tokenizer

    notes = {r["id"]: note_of(r) for split in sorted(prepared.glob("*.jsonl")) for r in read_jsonl(split)
             if "text" in r}
    tokenizer = load_tokenizer(base)
    out: dict[str, tuple[dict, str]] = {}
    for path in sorted(predictions.rglob("*.jsonl")):
        for row in read_jsonl(path):
            if row["id"] in out or row["id"] not in notes or len(row["raw"]) != 1:
                continue
            text = row["raw"][0]
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            content = [{"token": f"token_id:{i}", "logprob": -0.01, "bytes": None, "top_logprobs": []} for i in ids]
            out[row["id"]] = ({"id": row["id"], "note": notes[row["id"]]}, json.dumps({
                "id": f"chatcmpl-{len(out)}", "object": "chat.completion", "created": 0, "model": "survlm",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": {"content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": len(ids), "total_tokens": len(ids)}}))
            if len(out) == limit:
                return list(out.values())
    return list(out.values())


def _key(note: str) -> str:
    return hashlib.sha256(note.encode()).hexdigest()


def serve(responses_file: str, port: int) -> None:
    """The stand-in server: for every POST the response recorded for the note in its last message (a whole note
    answered in one chunk), the model list for every GET."""
    responses = {k: v.encode() for k, v in json.loads(Path(responses_file).read_text()).items()}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive: the client's pooled connections are reused, as with vLLM

        def _send(self, body: bytes, status: int = 200) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._send(json.dumps({"object": "list", "data": [{"id": "survlm", "object": "model"}]}).encode())

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            body = responses.get(_key(request["messages"][-1]["content"]))   # a chat request: its last turn, the note
            if body is None:
                self._send(b'{"error": "no recorded answer for this note"}', 400)
            else:
                self._send(body)

        def log_message(self, *args):   # the requests hold note text: nothing is logged
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--predictions", type=Path, default=Path("data/predictions"))
    ap.add_argument("--base", type=Path, default=Path("models/base"))
    ap.add_argument("--notes", type=int, default=512, help="at most this many answered notes")
    ap.add_argument("--batch-size", type=int, default=512, help="concurrent requests, as engine.batch_size")
    ap.add_argument("--port", type=int, default=8093)
    ap.add_argument("--out")
    ap.add_argument("--serve", metavar="RESPONSES", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.port)

    from survlm.artifacts import load_prompt, read_jsonl
    from survlm.config import BackendSettings
    from survlm.modeling.backends import Decoding, make_backend
    from survlm.modeling.backends.openai import wait_until_serving
    from survlm.modeling.extractor import Task, run_tasks

    schema, system = load_prompt(args.prepared)
    recorded = recorded_answers(args.prepared, args.predictions, args.base, args.notes)
    records = [record for record, _ in recorded]
    url = f"http://127.0.0.1:{args.port}/v1"
    with tempfile.TemporaryDirectory() as tmp:
        canned = Path(tmp) / "responses.json"
        canned.write_text(json.dumps({_key(record["note"]): response for record, response in recorded}))
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(canned), "--port", str(args.port)])
        try:
            wait_until_serving(url, server, timeout_s=20, poll_s=0.2)
            backend = make_backend("openai", args.base, {}, schema, BackendSettings(
                openai_base_url=url, openai_model="survlm", openai_constraint="vllm_grammar",
                batch_size=args.batch_size, max_model_len=8192))
            t0, cpu0 = time.perf_counter(), time.process_time()
            run_tasks(backend, [Task("client_cost", None, records, Path(tmp) / "rows.jsonl")], schema, system,
                      Decoding(max_new_tokens=768, constrained=True), progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            backend.close()
        finally:
            server.terminate()
            server.wait(10)
        server_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        answered = list(read_jsonl(Path(tmp) / "rows.jsonl"))
    result = {
        "device": cpu_description(), "notes": len(records), "answers": len(answered), "batch_size": args.batch_size,
        "mean_answer_tokens": round(sum(len(json.loads(r)["choices"][0]["logprobs"]["content"])
                                        for _, r in recorded) / len(recorded), 1),
        "mean_note_chars": round(sum(len(r["note"]) for r in records) / len(records)),
        "client_wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2),
        "client_cpu_ms_per_answer": round(1000 * cpu / max(len(answered), 1), 2),
        "answers_with_confidences": sum(bool(r.get("confidence")) for r in answered),
        "statuses": dict(sorted(Counter(f["status"] for r in answered for f in r["fields"].values()).items())),
        "server_cpu_s": round(server_cpu.ru_utime + server_cpu.ru_stime, 2),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
