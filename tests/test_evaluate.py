"""The evaluate stage on hand-made predictions with known answers: every model on the same notes, the regex
baseline, the survival block and its headline gap, the plot data and the report."""
import json
from pathlib import Path

import pytest
import yaml

from conftest import write_prepared

from survlm.artifacts import note_of, prepared_record, target_of
from survlm.extraction import compact_json, parse_answer
from survlm.notes.render import render_patient
from survlm.predictions import result_to_json
from survlm.schema import system_prompt


def _record(schema, row, pid, split, style="flowsheet"):
    note = render_patient(row, schema, style, seed=2, pid=pid, n_days=5)
    rec = prepared_record(id=f"p{pid}", split=split, style=style, text=note.text, labels=note.labels,
                          target=compact_json(note.target), time=float(row["time"]), event=int(row["event"]),
                          n_tokens=len(note.text) // 4)
    return rec, {"id": rec["id"], **note.metadata()}


def _row(schema, rec, answer):
    results = parse_answer(answer, schema, note_of(rec))
    return {"id": rec["id"], "raw": [answer], "n_chunks": 1, "fields": {k: result_to_json(r) for k, r in results.items()},
            "prompt_tokens": 1, "completion_tokens": 1, "latency_s": 0.0, "finish_reasons": ["stop"]}


@pytest.fixture
def project(tmp_path, schema, support2_rows, monkeypatch):
    prepared, preds = tmp_path / "data" / "prepared", tmp_path / "data" / "predictions"
    prepared.mkdir(parents=True)
    splits = {"train": range(0, 150), "test": range(150, 190), "test_heldout": range(190, 196), "val": range(196, 198)}
    metas = []
    recs = {}
    for split, pids in splits.items():
        style = "nursing" if split == "test_heldout" else "flowsheet"
        rows = [_record(schema, support2_rows[p], p, split, style) for p in pids]
        recs[split] = [r for r, _ in rows]
        metas += [m for _, m in rows]
    write_prepared(prepared, recs, system=system_prompt(schema, "brief"))
    (prepared / "render_meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    for split in ("test", "test_heldout"):
        gold = [_row(schema, r, target_of(r)) for r in recs[split]]
        (preds / "baselines" / "sft").mkdir(parents=True, exist_ok=True)
        (preds / "baselines" / "zero_shot").mkdir(parents=True, exist_ok=True)
        (preds / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gold))
        nulls = compact_json({f.name: None for f in schema})
        (preds / "baselines" / "zero_shot" / f"{split}.jsonl").write_text(
            "".join(json.dumps(_row(schema, r, nulls)) + "\n" for r in recs[split]))
        # sft: gold except every answer says "male" (a known number of wrong_category errors)
        sft = []
        for r in recs[split]:
            answer = json.loads(target_of(r))
            answer["sex"] = {"value": "male", "evidence": None}
            sft.append(_row(schema, r, compact_json(answer)))
        (preds / "baselines" / "sft" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"survival": {
        "rsf_trees": 10, "n_jobs": 1, "refit_min_notes": 20}, "bootstrap": {"resamples": 200, "seed": 0}}}))
    monkeypatch.chdir(tmp_path)
    return recs


@pytest.mark.slow
def test_evaluate_on_known_predictions(project):
    from survlm.config import load_config
    from survlm.stages import evaluate

    evaluate.main(load_config("evaluate"), evaluate.Paths(
        prepared=Path("data/prepared"), predictions=Path("data/predictions"), metrics=Path("metrics/evaluate.json"),
        plots=Path("metrics/plots"), report=Path("metrics/report.md")))
    ev = json.loads(open("metrics/evaluate.json").read())
    test = ev["extraction_by_model"]["test"]
    assert set(test) == {"dpo", "sft", "zero_shot", "regex"}
    assert ev["extraction"]["model"] == "dpo" and ev["extraction"]["field_accuracy"] == 1.0
    assert ev["extraction"]["fabrication_rate"] == 0.0 and ev["extraction"]["json_valid_rate"] == 1.0
    n_female = sum(r["labels"]["sex"] == "female" for r in project["test"])
    assert test["sft"]["errors"]["wrong_category"] == n_female > 0
    assert test["zero_shot"]["omission_rate"] == 1.0 and test["zero_shot"]["fabrication_rate"] == 0.0
    assert 0.0 < test["regex"]["field_accuracy"] < 1.0
    s = ev["survival"]
    assert s["notes"] == 40 and s["cindex_dpo"] == s["cindex_gold"] and s["cindex_gap_dpo"] == 0.0
    assert s["cindex_zero_shot"] != s["cindex_gold"]          # all-null covariates lose the ranking
    assert s["refit_on_extracted"]["cindex_dpo"] == s["refit_on_extracted"]["cindex_gold"]
    for key in ("cindex_sft", "cindex_regex", "ibs_gold", "ibs_dpo", "cindex_uno_gold"):
        assert key in s
    assert ev["extraction_heldout"]["notes"] == 6
    rows = json.loads(open("metrics/plots/per_field_accuracy.json").read())
    assert {r["model"] for r in rows} == {"dpo", "sft", "zero_shot", "regex"}
    assert {r["split"] for r in rows} == {"test", "test_heldout"} and all("field" not in r for r in rows)
    assert {(r["split"], r["model"], r["covariate"]): r["accuracy"] for r in rows}[("test", "sft", "sex")] == \
        test["sft"]["per_field"]["sex"]
    errors = json.loads(open("metrics/plots/field_errors.json").read())
    assert {"split": "test", "model": "sft", "covariate": "sex", "error": "wrong_category", "count": n_female} in errors
    assert not [e for e in errors if e["model"] == "dpo"]
    km = json.loads(open("metrics/plots/km_risk_groups.json").read())
    cohorts = {r["cohort"] for r in km}
    assert cohorts == {"extracted test notes: gold vs dpo (40 patients)", "whole test split: gold vs regex (40 patients)"}
    for cohort in cohorts:   # every source's curves are on the same patients: same at-risk totals at time 0
        first = [r for r in km if r["cohort"] == cohort and r["time"] == 0.0]
        by_source = {}
        for r in first:
            by_source[r["source"]] = by_source.get(r["source"], 0) + r["at_risk"]
        assert len(by_source) == 2 and set(by_source.values()) == {40}
    assert all(r["lower"] <= r["survival"] <= r["upper"] for r in km)
    dpo_ci = test["dpo"]["ci95"]["field_accuracy"]
    assert dpo_ci == [1.0, 1.0]                               # right on every resample
    lo, hi = test["sft"]["ci95"]["field_accuracy"]
    assert lo < test["sft"]["field_accuracy"] < hi
    assert s["ci95"]["cindex_gap_dpo"] == [0.0, 0.0]          # same covariates, same patients: no gap at all
    lo, hi = s["ci95"]["cindex_gold"]
    assert lo < s["cindex_gold"] < hi
    assert s["full_test"]["ci95"]["cindex_regex"] is not None
    report = open("metrics/report.md").read()
    assert "C-index(DPO) - C-index(gold) = 0.0" in report and "| sft |" in report
    assert test["sft"]["per_field_errors"]["sex"] == {"wrong_category": n_female}
    assert f"| sex | {test['sft']['per_field']['sex']} | wrong_category {n_female} |" in report
    assert "## Errors by field: dpo" not in report          # dpo is right everywhere: no table
    for r in project["test"][:3]:                             # no note text leaves the stage
        assert note_of(r)[:40] not in report + json.dumps(ev)
