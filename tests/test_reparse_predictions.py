"""benchmarks/reparse_predictions.py: a run's stored answers read again by the current parser."""
import importlib.util
import json
import sys
from pathlib import Path

from conftest import record, write_prepared

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "reparse_predictions.py"
spec = importlib.util.spec_from_file_location("reparse_predictions", BENCHMARK)
reparse_predictions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reparse_predictions)


def sodium(value: str, evidence: str) -> str:
    return '{"sodium_meq_l":{"value":"%s","unit":"mEq/L","evidence":"%s"}}' % (value, evidence)


def stored_row(i: int, raw: list[str], schema, status: str) -> dict:
    """A prediction row as an older parser stored it: sodium refused with `status`."""
    from survlm.extraction import parse_answer
    from survlm.predictions import result_to_json

    fields = {name: result_to_json(r) for name, r in parse_answer(raw[0], schema).items()}
    fields["sodium_meq_l"] = {"status": status, "candidate": 138.0}
    return {"id": f"n{i}", "raw": raw, "fields": fields, "values": {name: None for name in fields}}


def test_stored_answers_are_read_again_and_merged_rows_kept(tmp_path, monkeypatch, capsys, schema):
    from survlm.artifacts import read_jsonl, write_jsonl

    prepared = write_prepared(tmp_path / "prepared", {"val": [], "test_heldout": [],
                                                      "test": [record(i, split="test") for i in range(3)]})
    preds = tmp_path / "predictions"
    preds.mkdir()
    paraphrased = sodium("138", "sodium 138 on day 3")      # the note writes "HD3 Na 138"
    unwritten = sodium("150", "Na 150")                     # no 150 in the note
    write_jsonl(preds / "test.jsonl", [
        stored_row(0, [paraphrased], schema, "ungrounded"),
        stored_row(1, [unwritten], schema, "ungrounded"),
        stored_row(2, [paraphrased, paraphrased], schema, "ungrounded"),   # two chunks: not one answer
    ])
    out = tmp_path / "reparsed"
    monkeypatch.setattr(sys, "argv", ["reparse", "--prepared", str(prepared), "--predictions", str(preds),
                                      "--out", str(out)])
    reparse_predictions.main()
    rows = {r["id"]: r for r in read_jsonl(out / "test.jsonl")}
    assert rows["n0"]["fields"]["sodium_meq_l"]["status"] == "ok" and rows["n0"]["values"]["sodium_meq_l"] == 138
    assert rows["n1"]["fields"]["sodium_meq_l"]["status"] == "ungrounded"
    assert rows["n2"]["fields"]["sodium_meq_l"]["status"] == "ungrounded"   # copied as it was
    summary = json.loads(capsys.readouterr().out)["test.jsonl"]
    assert summary == {"rows": 3, "copied_unchanged": 1, "status_changes": {"ungrounded->ok": 1}}
