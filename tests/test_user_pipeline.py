"""A researcher's own labelled notes through the whole pipeline with real `dvc repro` on CPU: prepare (labels
located, targets built) -> sft -> select_ckpt -> make_pairs -> dpo -> infer -> evaluate (extraction on labelled
test notes, Cox and RSF on the file's own time and event), on a tiny random Llama."""
import csv
import io
import json
import random
import subprocess

import yaml
from conftest import dvc_env

SCHEMA = """\
name: my-cohort
version: 1
day_label: hospital day 3
fields:
  age:
    type: number
    unit: years
    range: [18, 110]
    description: Age at admission.
    rule: Age in years as stated in the note.
    aliases: [age]
    units: {years: 1}
  diabetes:
    type: bool
    description: Diabetes mellitus.
    rule: true if diabetes mellitus is documented, else false.
    aliases: [diabetes, DM2]
  sodium_meq_l:
    type: number
    unit: mEq/L
    day: 3
    range: [100, 190]
    description: Serum sodium on hospital day 3.
    rule: The day-3 sodium.
    aliases: [sodium, Na]
    units: {mEq/L: 1, mmol/L: 1}
    implicit_unit: mEq/L
  heart_rate_bpm:
    type: number
    unit: /min
    day: 3
    range: [0, 300]
    description: Heart rate on hospital day 3.
    rule: The day-3 heart rate.
    aliases: [HR, heart rate]
    units: {/min: 1}
"""


def _notes(n: int = 24) -> list[dict]:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        age, dm = rng.randint(40, 90), i % 3 == 0
        na = [rng.randint(128, 146) for _ in range(4)]
        hr = [rng.randint(60, 120) for _ in range(4)]
        text = (f"Admit date: 03/{i % 27 + 1:02d}/2024\n{age} yo man. PMH: {'DM2, ' if dm else ''}hypertension.\n"
                + "".join(f"HD {d + 1}: Na {na[d]}{' mmol/L' if d == 2 and i % 2 else ''}, HR {hr[d]} bpm.\n"
                          for d in range(4) if d != 2 or i != 3))   # u03: nothing charted on day 3
        time = round(200 * (1 - (na[2] - 128) / 20) + rng.uniform(1, 60), 1)
        row = {"id": f"u{i:02d}", "text": text, "time": time, "event": int(rng.random() < 0.6),
               "mrn": f"MRN-{1000 + i}", "age": age, "diabetes": "yes" if dm else "no",
               "sodium_meq_l": na[2], "heart_rate_bpm": hr[2]}
        if i % 4 == 1 or i == 6:
            row["heart_rate_bpm"] = ""          # unlabelled: unknown, never trained or scored as null
        if i == 2:
            row["sodium_meq_l"] = na[2] + 9     # the note says otherwise: reported, not trained
        rows.append(row)
    return rows


def _dvc(repo, *args):
    return subprocess.run(["dvc", *args], cwd=repo, env=dvc_env(), capture_output=True, text=True)


def test_user_notes_through_every_stage(repo_copy, tiny_llama_dir):
    rows = _notes()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (repo_copy / "data" / "user" / "notes.csv").write_text(buf.getvalue())
    (repo_copy / "data" / "user" / "schema.yaml").write_text(SCHEMA)
    engine = {"max_model_len": 2048, "gpu_memory_utilization": 0.4, "enforce_eager": True, "tensor_parallel_size": 1,
              "batch_size": 16, "quantization": None}
    gen = {"backend": "hf", "max_new_tokens": 48, "constrained": True, "engine": engine}
    p = repo_copy / "params.yaml"
    params = yaml.safe_load(p.read_text())
    params["model"]["base"] = str(tiny_llama_dir)
    params["prepare"].update(source="path", path="data/user/notes.csv", schema="data/user/schema.yaml", workers=1,
                             split={"train": 0.5, "val": 0.125, "pairs": 0.125, "test": 0.25})
    params["sft"].update(max_steps=2, save_steps=1, eval_steps=1, eval_notes=1, max_length=1024, learning_rate=5e-3,
                         lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})
    params["select_ckpt"].update(val_notes=2, **gen)
    params["make_pairs"].update(notes=3, samples=1, **gen)
    params["dpo"].update(max_pairs=4, max_steps=1, max_length=1024, max_prompt_length=900, val_notes=1,
                         report={**gen, "max_new_tokens": 24})
    params["infer"].update(test_notes=None, heldout_notes=0, baselines=["sft"], chunk_overlap=16,
                           **{k: v for k, v in gen.items()})
    params["evaluate"]["survival"].update(rsf_trees=10, rsf_min_leaf=2, n_jobs=1)
    params["evaluate"]["bootstrap"].update(resamples=50)      # intervals are not checked here
    p.write_text(yaml.safe_dump(params, sort_keys=False))

    run = _dvc(repo_copy, "repro")
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "Traceback" not in run.stderr

    prepare = json.loads((repo_copy / "metrics" / "prepare.json").read_text())
    ev = prepare["evidence"]
    assert ev["by_field"]["sodium_meq_l"]["contradicted"] == 1 and ev["contradicted"] == [
        {"id": "u02", "field": "sodium_meq_l"}]
    assert ev["by_field"]["sodium_meq_l"]["not_found"] == 1 and ev["by_field"]["heart_rate_bpm"]["not_found"] == 1
    assert ev["unlocated"] == "value_only" and ev["records_dropped"] == 0
    assert ev["totals"]["located"] == sum(1 for r in rows for k in ("age", "diabetes", "sodium_meq_l", "heart_rate_bpm")
                                          if r[k] != "") - 3
    assert prepare["labelled_rate"]["heart_rate_bpm"] == round(17 / 24, 4) and prepare["null_rate"]["heart_rate_bpm"] == 0.0
    assert "u02: sodium_meq_l: the note contradicts the label" in run.stderr

    out = repo_copy / "data" / "prepared"
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    from survlm.artifacts import target_of

    for r in train:
        answer = target_of(r)
        assert json.loads(answer)  # the answer format of the SUPPORT2 targets, one JSON object
        if "heart_rate_bpm" not in r["labels"]:   # unlabelled: a placeholder that no loss covers
            assert "heart_rate_bpm" in r["untrained"]
            assert any(answer[s:e] == "null" for s, e in r["loss_mask"])
    assert any("heart_rate_bpm" not in r["labels"] for r in train)
    sft = json.loads((repo_copy / "metrics" / "sft.json").read_text())
    assert sft["train_examples"] == len(train) and sft["steps"] == 2

    pairs = [json.loads(line) for f in ("train", "eval") for line in (repo_copy / "data" / "pairs" / f"{f}.jsonl")
             .read_text().splitlines()]
    assert pairs, "make_pairs gave no pair"
    by_id = {json.loads(line)["id"]: json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()}
    # u06 (heart rate unlabelled) is in the seeded pairs split: the random model's truncated answers cannot fill
    # its placeholders, so its pairs are dropped and counted rather than teaching a null heart rate (how a filled
    # placeholder's pair differs only where the label is known: tests/test_unlabelled.py)
    assert not [p for p in pairs if by_id[p["id"]].get("untrained")]
    assert json.loads((repo_copy / "metrics" / "make_pairs.json").read_text())["dropped_unfilled_placeholders"] > 0

    evaluate = json.loads((repo_copy / "metrics" / "evaluate.json").read_text())
    test = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    scored = evaluate["extraction_by_model"]["test"]["dpo"]
    assert scored["notes"] == len(test)
    assert sum(scored["statuses"].values()) == sum(len(r["labels"]) for r in test)   # unlabelled fields unscored
    assert set(evaluate["extraction_by_model"]["test"]) == {"dpo", "sft", "regex"}
    survival = evaluate["survival"]
    assert survival["notes"] == len(test) and 0.0 <= survival["cindex_gold"] <= 1.0
    assert survival["cindex_dpo"] is not None and "rsf_harrell" in survival["by_source"]["gold"]
