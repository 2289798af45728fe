"""`survlm extract` on new notes files with a real (tiny) LoRA adapter through the HF backend."""
import csv
import json

import pandas as pd
import pytest

from survlm.cli import main

NOTES = [{"id": f"n{i}", "text": f"6{i} yo woman. HD3: HR 8{i}, T 37.{i} C. No diabetes."} for i in range(3)]
FIELDS = "sex,diabetes,heart_rate_bpm"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # no data/prepared/prompt.json here: the schema's brief prompt is used
    return tmp_path


def _args(tiny_lora_pair, notes, out, *extra):
    base, lora = tiny_lora_pair
    return [
        "extract", str(notes), "--adapter", str(lora), "--base", str(base), "--out", str(out), "--backend", "hf",
        "--fields", FIELDS, "--max-new-tokens", "400", "--batch-size", "2", "--quiet", *extra]


def test_extract_csv_and_jsonl_give_the_same_table(tiny_lora_pair, workdir, capsys):
    (workdir / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES))
    pd.DataFrame(NOTES).to_csv(workdir / "notes.csv", index=False)
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "a.csv", "--evidence")) == 0
    assert main(_args(tiny_lora_pair, workdir / "notes.csv", workdir / "b.csv", "--evidence")) == 0
    a = list(csv.DictReader(open(workdir / "a.csv")))
    b = list(csv.DictReader(open(workdir / "b.csv")))
    assert [r["id"] for r in a] == ["n0", "n1", "n2"] and a == b
    assert set(a[0]) == {"id", "sex", "diabetes", "heart_rate_bpm", "sex_status", "diabetes_status",
                         "heart_rate_bpm_status", "sex_evidence", "diabetes_evidence", "heart_rate_bpm_evidence"}
    assert all(r["sex_status"] in ("ok", "null", "ungrounded", "invalid_category") for r in a)
    out = capsys.readouterr().out
    assert "3 notes x 3 fields; statuses:" in out and NOTES[0]["text"] not in out   # no note text logged


def test_extract_resumes_after_interruption(tiny_lora_pair, workdir):
    (workdir / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES))
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "full.csv")) == 0
    preds = workdir / "full.csv.predictions.jsonl"
    kept = preds.read_text().splitlines(keepends=True)[:1]
    preds.write_text("".join(kept) + '{"id": "n1", "tor')           # killed while writing the second row
    (workdir / "full.csv").unlink()
    before = json.loads(kept[0])
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "full.csv")) == 0
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["n0", "n1", "n2"] and rows[0] == before   # n0 was not asked again
    assert len(list(csv.DictReader(open(workdir / "full.csv")))) == 3


def test_extract_bad_input_fails_cleanly(tiny_lora_pair, workdir, capsys):
    (workdir / "bad.jsonl").write_text(json.dumps(NOTES[0]) + "\n" + '{"id": "x", "text": }\n')
    assert main(_args(tiny_lora_pair, workdir / "bad.jsonl", workdir / "c.csv")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{workdir / 'bad.jsonl'}:2: record: bad JSON")
    assert not (workdir / "c.csv").exists() and not (workdir / "c.csv.predictions.jsonl").exists()
    (workdir / "ok.jsonl").write_text(json.dumps(NOTES[0]) + "\n")
    args = _args(tiny_lora_pair, workdir / "ok.jsonl", workdir / "c.csv")
    args[args.index("--fields") + 1] = "sex,nope"
    assert main(args) == 1
    assert "--fields: not in schema" in capsys.readouterr().err


def test_extract_with_a_user_schema_file(tiny_lora_pair, workdir):
    """A researcher's own schema YAML (not the bundled one): its fields, and only those, become the columns."""
    (workdir / "my_schema.yaml").write_text(
        "name: my-cohort\nversion: 1\nday_label: admission\nfields:\n"
        "  pulse:\n    type: number\n    unit: bpm\n    decimals: 0\n    range: [20, 250]\n"
        "    description: Heart rate.\n    rule: Heart rate at admission.\n    units: {bpm: 1, /min: 1}\n"
        "  smoker:\n    type: bool\n    description: Current smoker.\n    rule: true if the note says the patient smokes.\n")
    (workdir / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES))
    base, lora = tiny_lora_pair
    assert main(["extract", "notes.jsonl", "--adapter", str(lora), "--base", str(base), "--out", "c.csv",
                 "--backend", "hf", "--schema", "my_schema.yaml", "--max-new-tokens", "200", "--batch-size", "3",
                 "--quiet"]) == 0
    rows = list(csv.DictReader(open(workdir / "c.csv")))
    assert [r["id"] for r in rows] == ["n0", "n1", "n2"]
    assert set(rows[0]) == {"id", "pulse", "pulse_status", "smoker", "smoker_status"}


def test_review_page_only_when_asked(tiny_lora_pair, workdir):
    (workdir / "notes.jsonl").write_text(json.dumps(NOTES[0]) + "\n")
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "a.csv")) == 0
    assert [p.name for p in workdir.glob("*.html")] == []                 # never by default: it shows note text
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "a.csv", "--review-html", "r.html")) == 0
    page = (workdir / "r.html").read_text()
    assert NOTES[0]["text"] in page and page.count("<tr class=") == 3     # the note, and one row per field
