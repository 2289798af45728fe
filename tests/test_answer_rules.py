"""benchmarks/answer_rules.py: what each answer rule changes on stored answers and on gold answers."""
import importlib.util
import json
from pathlib import Path

from conftest import record, write_prepared

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "answer_rules.py"
spec = importlib.util.spec_from_file_location("answer_rules", BENCHMARK)
answer_rules = importlib.util.module_from_spec(spec)
spec.loader.exec_module(answer_rules)


def test_each_rule_is_switched_off_alone_and_gold_answers_are_read(tmp_path, capsys):
    """Day 1's sodium copied into day 3 is what the day check changes (wrong either way: refused, or a wrong
    value); the other-field check and the list rules change nothing here; the gold answers read as their labels say. The rules are back
    on afterwards."""
    from survlm.artifacts import write_jsonl
    from survlm.extraction import parse_answer
    from survlm.schema import load_schema

    prepared = write_prepared(tmp_path / "prepared", {"test": [record(i, split="test") for i in range(3)]})
    preds = tmp_path / "predictions"
    preds.mkdir()
    answer = '{"sodium_meq_l":{"value":"%s","unit":null,"evidence":"Na %s"}}'
    write_jsonl(preds / "test.jsonl", [{"id": "n0", "raw": [answer % ("131", "131")]},
                                       {"id": "n1", "raw": [answer % ("138", "138")]}])
    out = tmp_path / "rules.json"
    answer_rules.main(["--prepared", str(prepared), "--predictions", str(preds), "--gold", f"mine={prepared}",
                       "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["rules"]["day_check"]["test.jsonl"] == {
        "rows": 2, "changed_fields": {"where the note has no value": 0, "wrong->wrong": 1},
        "by_field": {"sodium_meq_l": 1}}
    for rule in ("other_field", "flags_from_list", "counts_without_absence"):
        assert result["rules"][rule]["test.jsonl"]["changed_fields"] == {}
    assert result["gold"] == {"mine": {"notes": 3}} and json.loads(capsys.readouterr().out) == result
    note = "HD1 Na 131. HD3 Na 138. HD4 Na 140."
    assert parse_answer(answer % ("131", "131"), load_schema(), note)["sodium_meq_l"].status == "other_day"
    pulse = '{"heart_rate_bpm":{"value":"138","unit":null,"evidence":"Na 138"}}'
    assert parse_answer(pulse, load_schema(), "HD3 Na 138, HR 88.")["heart_rate_bpm"].status == "other_field"
