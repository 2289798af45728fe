"""`survlm extract` on new notes files with a real (tiny) LoRA adapter through the HF backend."""
import csv
import json

import pandas as pd
import pytest

from conftest import write_run_record

from survlm.cli import main

NOTES = [{"id": f"n{i}", "text": f"6{i} yo woman. HD3: HR 8{i}, T 37.{i} C. No diabetes.", "mrn": f"M-{i}"}
         for i in range(3)]
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
    assert set(a[0]) == {"id", "mrn", "sex", "diabetes", "heart_rate_bpm", "sex_status", "diabetes_status",
                         "heart_rate_bpm_status", "sex_evidence", "diabetes_evidence", "heart_rate_bpm_evidence",
                         "sex_confidence", "diabetes_confidence", "heart_rate_bpm_confidence"}
    confidences = [r[f"{f}_confidence"] for r in a for f in FIELDS.split(",")]
    assert any(confidences) and all(0 <= float(c) <= 1 for c in confidences if c)  # fields read from a JSON answer
    assert list(a[0])[:2] == ["id", "mrn"] and [r["mrn"] for r in a] == ["M-0", "M-1", "M-2"]  # metadata passes through
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
    """A researcher's own schema YAML (not the bundled one): its fields, and only those, become the columns. The
    adapter was trained on it (its run record says so): one trained on the bundled schema is refused."""
    import shutil

    from survlm.schema import load_schema, system_prompt

    (workdir / "my_schema.yaml").write_text(
        "name: my-cohort\nversion: 1\nday_label: admission\nfields:\n"
        "  pulse:\n    type: number\n    unit: bpm\n    decimals: 0\n    range: [20, 250]\n"
        "    description: Heart rate.\n    rule: Heart rate at admission.\n    units: {bpm: 1, /min: 1}\n"
        "  smoker:\n    type: bool\n    description: Current smoker.\n    rule: true if the note says the patient smokes.\n")
    (workdir / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES))
    base, lora = tiny_lora_pair
    args = ["extract", "notes.jsonl", "--base", str(base), "--out", "c.csv", "--backend", "hf", "--schema",
            "my_schema.yaml", "--max-new-tokens", "200", "--batch-size", "3", "--quiet", "--adapter"]
    assert main(args + [str(lora)]) == 1 and not (workdir / "c.csv").exists()
    shutil.copytree(lora, workdir / "mine")
    write_run_record(workdir / "mine", base, system_prompt(load_schema("my_schema.yaml"), "brief"), "my_schema.yaml")
    assert main(args + ["mine"]) == 0
    rows = list(csv.DictReader(open(workdir / "c.csv")))
    assert [r["id"] for r in rows] == ["n0", "n1", "n2"]
    assert set(rows[0]) == {"id", "mrn", "pulse", "pulse_status", "smoker", "smoker_status", "pulse_confidence",
                            "smoker_confidence"}


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("change,expected", [
    (("--fields", ",,,"), "--fields ',,,': no field names"),
    (("--batch-size", "0"), "--batch-size: must be at least 1 (got 0)"),
    (("--max-new-tokens", "-5"), "--max-new-tokens: must be at least 1"),
    (("--prompt-file", "missing.json"), "missing.json: cannot read it"),
    (("--prompt-file", "bad_prompt.json"), "bad_prompt.json: not a prompt.json"),
    (("--prompt-file", "old_prompt.json"), "old_prompt.json: written by an older prepare"),
    (("--prompt-file", "other_schema.json"), "other_schema.json: prepared with schema digest 0123456789abcdef, but "
                                              "bundled:support2-v1 now has digest"),
    (("--prompt-file", "sodium_prompt.json"), "{lora}/adapter_run.json: prompt_digest: the adapter was trained with"),
    (("--adapter", "bare_lora"), "bare_lora/adapter_run.json: missing: no record of how this adapter was trained"),
    (("--out", "a_dir"), "--out a_dir: is a directory"),
    (("--out", "a_file/c.csv"), "--out a_file/c.csv: cannot write in a_file"),
    (("--base", "models/bse"), "--base models/bse: no such model directory, and not in the local Hugging Face"),
    # checked after the model loads: the directories made for --out are removed again
    (("--max-model-len", "60", "--out", "new/deeper/c.csv"), "--max-model-len 60: context 60 leaves no room"),
])
def test_extract_refuses_bad_options_in_one_line_and_writes_nothing(tiny_lora_pair, workdir, capsys, change,
                                                                    expected):
    import shutil

    from conftest import write_prepared

    (workdir / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES))
    (workdir / "bad_prompt.json").write_text('{"system": 1}')
    (workdir / "old_prompt.json").write_text('{"system_prompt": "Extract.", "schema_path": "bundled:support2-v1"}')
    prompt = json.loads((write_prepared(workdir / "prep", {}) / "prompt.json").read_text())  # another prompt
    shutil.move(workdir / "prep" / "prompt.json", workdir / "sodium_prompt.json")
    (workdir / "other_schema.json").write_text(json.dumps({**prompt, "schema": {"digest": "0123456789abcdef"}}))
    (workdir / "prep").rmdir()
    shutil.copytree(tiny_lora_pair[1], workdir / "bare_lora")
    (workdir / "bare_lora" / "adapter_run.json").unlink()
    (workdir / "a_dir").mkdir()
    (workdir / "a_file").write_text("x")
    expected = expected.format(lora=tiny_lora_pair[1])
    before = _files(workdir)
    args = _args(tiny_lora_pair, "notes.jsonl", "c.csv")
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err
    assert _files(workdir) == before


def test_extract_serves_the_adapter_on_the_base_it_was_trained_on(tiny_lora_pair, workdir, tmp_path_factory):
    """An adapter whose run record says QLoRA is served on the NF4 base: its answers are those of the adapter on
    the 4-bit base, not on the full-precision one; `--quantization` overrides the record."""
    import shutil

    from survlm.modeling.backends import BackendSettings, Decoding, make_backend
    from survlm.artifacts import read_jsonl
    from survlm.modeling.extractor import Task, run_tasks
    from survlm.schema import load_schema, system_prompt

    base, lora = tiny_lora_pair
    qlora = tmp_path_factory.mktemp("qlora") / "sft_best"
    shutil.copytree(lora, qlora)
    write_run_record(qlora, base, system_prompt(load_schema(), "brief"), quantization="nf4")
    (workdir / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES[:2]))
    common = ["extract", "notes.jsonl", "--adapter", str(qlora), "--base", str(base), "--backend", "hf",
              "--fields", "sex", "--max-new-tokens", "40", "--batch-size", "2", "--quiet"]
    assert main(common + ["--out", "record.csv"]) == 0
    assert main(common + ["--out", "override.csv", "--quantization", "none"]) == 0
    bare = qlora.with_name("bare")   # an adapter trained elsewhere (no record) is served as --quantization says
    shutil.copytree(qlora, bare)
    (bare / "adapter_run.json").unlink()
    assert main([*common[:3], str(bare), *common[4:], "--out", "stated.csv", "--quantization", "nf4"]) == 0
    sub = load_schema().subset(["sex"])
    records = [{"id": n["id"], "note": n["text"]} for n in NOTES[:2]]
    raw = {}
    for quant in ("nf4", "none"):
        backend = make_backend("hf", base, {"sft_best": qlora}, sub, BackendSettings(quantization=quant))
        run_tasks(backend, [Task("x", "sft_best", records, workdir / f"direct-{quant}.jsonl")], sub,
                  system_prompt(load_schema(), "brief"), Decoding(max_new_tokens=40), progress=False)
        raw[quant] = [r["raw"] for r in read_jsonl(workdir / f"direct-{quant}.jsonl")]
    assert raw["nf4"] != raw["none"]                                 # the base's quantization shows in answers
    assert [r["raw"] for r in read_jsonl(workdir / "record.csv.predictions.jsonl")] == raw["nf4"]
    assert [r["raw"] for r in read_jsonl(workdir / "override.csv.predictions.jsonl")] == raw["none"]
    assert [r["raw"] for r in read_jsonl(workdir / "stated.csv.predictions.jsonl")] == raw["nf4"]


def test_review_page_only_when_asked(tiny_lora_pair, workdir):
    (workdir / "notes.jsonl").write_text(json.dumps(NOTES[0]) + "\n")
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "a.csv")) == 0
    assert [p.name for p in workdir.glob("*.html")] == []                 # never by default: it shows note text
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "a.csv", "--review-html", "r.html")) == 0
    page = (workdir / "r.html").read_text()
    assert NOTES[0]["text"] in page and page.count("<tr class=") == 3     # the note, and one row per field


def test_extract_with_a_calibration_abstains_below_its_threshold(tiny_lora_pair, workdir, capsys):
    """A calibration that trusts no value answer (every calibrated confidence 0.1, threshold 0.5): every value
    with a confidence is written empty with status abstained; one that trusts them all changes nothing but the
    confidences."""
    from survlm.confidence import Calibration, Curve

    (workdir / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES))
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "raw.csv")) == 0
    raw = list(csv.DictReader(open(workdir / "raw.csv")))
    for name, value, threshold in (("distrust", 0.1, 0.5), ("trust", 0.9, 0.5)):
        cal = Calibration(Curve((1.0,), (value,)), Curve((1.0,), (0.7,)), threshold, 10)
        (workdir / f"{name}.json").write_text(json.dumps(cal.to_json()))
        assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "raw.csv",
                          "--calibration", str(workdir / f"{name}.json"))) == 0
        rows = list(csv.DictReader(open(workdir / "raw.csv")))
        judged = 0
        for before, after in zip(raw, rows):
            for f in FIELDS.split(","):
                if before[f"{f}_status"] == "ok" and before[f"{f}_confidence"]:
                    expected = ("abstained", "", "0.1") if name == "distrust" else ("ok", before[f], "0.9")
                    assert (after[f"{f}_status"], after[f], after[f"{f}_confidence"]) == expected
                    judged += 1
                elif before[f"{f}_status"] == "ok":   # no raw confidence: nothing to judge it by, so it is kept
                    assert (after[f"{f}_status"], after[f], after[f"{f}_confidence"]) == ("ok", before[f], "")
                elif before[f"{f}_status"] == "null":
                    assert after[f"{f}_confidence"] == "0.7"
                else:   # refused or unreadable: empty either way, under the status that says why
                    assert (after[f"{f}_status"], after[f]) == (before[f"{f}_status"], "")
        assert judged
    (workdir / "bad.json").write_text("{}")
    assert main(_args(tiny_lora_pair, workdir / "notes.jsonl", workdir / "x.csv", "--calibration",
                      str(workdir / "bad.json"))) == 1
    assert "--calibration" in capsys.readouterr().err
