"""benchmarks/client_cost.py: survlm's own work per answer through the openai backend, against its stand-in server."""
import importlib.util
import json
import socket
from pathlib import Path

from conftest import record, write_prepared

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "client_cost.py"
spec = importlib.util.spec_from_file_location("client_cost", BENCHMARK)
client_cost = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client_cost)


def test_recorded_answers_come_back_through_the_client_and_are_read(tiny_llama_dir, tmp_path, capsys):
    """Each note gets the answer recorded for it: day 3's sodium reads as it is, day 1's is refused as another
    day's, and every answer keeps its field confidences from the token ids the server returned."""
    from survlm.artifacts import write_jsonl

    prepared = write_prepared(tmp_path / "prepared", {"test": [record(i, split="test") for i in range(3)]})
    preds = tmp_path / "predictions"
    preds.mkdir()
    answer = '{"sodium_meq_l":{"value":"%s","unit":null,"evidence":"Na %s"}}'
    write_jsonl(preds / "test.jsonl", [{"id": "n0", "raw": [answer % ("138", "138")]},
                                       {"id": "n1", "raw": [answer % ("131", "131")]},
                                       {"id": "n2", "raw": [answer % ("138", "138")]},
                                       {"id": "n0", "raw": [answer % ("131", "131")]}])   # n0's second: not used
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "cost.json"
    client_cost.main(["--prepared", str(prepared), "--predictions", str(preds), "--base", str(tiny_llama_dir),
                      "--notes", "6", "--batch-size", "3", "--port", str(port), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["notes"] == result["answers"] == result["answers_with_confidences"] == 3
    assert result["statuses"]["ok"] == 2 and result["statuses"]["other_day"] == 1
    assert result["client_cpu_ms_per_answer"] > 0 and json.loads(capsys.readouterr().out) == result
