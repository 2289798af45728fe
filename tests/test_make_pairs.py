"""The make_pairs stage end to end: a tiny random Llama with a LoRA adapter answers real rendered notes (HF
backend), and the stage writes balanced single-field pairs, shuffled, with counts by direction and type."""
import json

import yaml
from conftest import write_prepared

from survlm.extraction import compact_json
from survlm.notes.render import render_patient


def test_make_pairs_stage_single_field_balanced(tiny_lora_pair, schema, support2_rows, tmp_path, monkeypatch):
    from survlm.pairs import pair_direction
    from survlm.stages import make_pairs

    from survlm.artifacts import chat_prompt, prepared_record

    base, lora = tiny_lora_pair
    records, metas = [], []
    for pid, row in enumerate(support2_rows[:6]):
        note = render_patient(row, schema, "flowsheet", seed=1, pid=pid, n_days=5, alt_unit_rate=0.5)
        records.append(prepared_record(id=f"p{pid}", split="pairs", style="flowsheet", text=note.text,
                                       labels=note.labels, target=compact_json(note.target), time=row["time"],
                                       event=row["event"], n_tokens=len(note.text) // 4))
        metas.append({"id": f"p{pid}", **note.metadata()})
    prepared = write_prepared(tmp_path / "prepared", {"pairs": records}, system="Extract.")
    (prepared / "render_meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    monkeypatch.chdir(tmp_path)
    params = {"notes": 6, "samples": 1, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": 48, "constrained": True,
              "max_model_rejections": 3, "single_field": True, "max_type_ratio": 1.0, "max_direction_ratio": 1.0,
              "synthetic": {"last_value": 1.0, "first_value": 1.0, "fabricated": 1.0, "unit_wrong": 1.0},
              "eval_fraction": 0.25, "backend": "hf", "seed": 0}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"make_pairs": params}))
    make_pairs.main(["--prepared", str(prepared), "--base", str(base), "--adapter", str(lora), "--out", "pairs",
                     "--metrics", "m.json"])
    m = json.loads((tmp_path / "m.json").read_text())
    pairs = [json.loads(line) for f in ("train", "eval") for line in (tmp_path / "pairs" / f"{f}.jsonl").open()]
    assert len(pairs) == m["pairs"] == m["train_pairs"] + m["eval_pairs"] > 0
    assert m["single_field"] is True and m["balance"]["after"]["by_direction"] == m["by_direction"]
    v2n, n2v = m["by_direction"].get("value_to_null", 0), m["by_direction"].get("null_to_value", 0)
    assert max(v2n, n2v) <= max(min(v2n, n2v), 1)
    assert m["balance"]["before"]["by_type"] != m["balance"]["after"]["by_type"]    # the cap did something
    by_id = {r["id"]: r for r in records}
    for p in pairs:   # DPO's prompt: the prepared prompt and the note, built from the plain record
        assert p["prompt"] == chat_prompt("Extract.", by_id[p["id"]])
        assert p["rejected"][0]["content"] != p["chosen"][0]["content"] and len(p["fields"]) == 1
        assert p["direction"] == pair_direction(p["chosen"][0]["content"], p["rejected"][0]["content"])
    train_ids = [json.loads(line)["id"] for line in (tmp_path / "pairs" / "train.jsonl").open()]
    assert train_ids != sorted(train_ids)           # a seeded shuffle (dpo.max_pairs then samples), not note order
