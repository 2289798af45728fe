"""Unknown is not null: a field a user did not label is neither scored nor taught (metrics, preference pairs)."""
import json

from survlm.extraction import compact_json, parse_answer
from survlm.metrics import score
from survlm.pairs import fill_untrained, pair_is_valid

NOTE = "HD 3: Na 138, HR 92. HD 4: Na 141, HR 80."
NA = {"value": "138", "unit": None, "evidence": "Na 138"}
HR = {"value": "80", "unit": None, "evidence": "HR 80"}


def _answer(schema, **items):
    return compact_json({f.name: items.get(f.name) for f in schema})


def test_unlabelled_fields_are_not_scored(schema):
    results = parse_answer(_answer(schema, sodium_meq_l=NA, heart_rate_bpm=HR), schema, NOTE)
    only_na = score(schema, [({"sodium_meq_l": 138.0}, results, None)])
    assert only_na["field_accuracy"] == 1.0 and only_na["per_field"]["heart_rate_bpm"] is None
    assert sum(only_na["statuses"].values()) == 1 and only_na["fabrication_rate"] is None
    # the same answer against SUPPORT2-style gold (every field labelled, heart rate null): fabricated
    full = score(schema, [({**{f.name: None for f in schema}, "sodium_meq_l": 138.0}, results, None)])
    assert full["per_field"]["heart_rate_bpm"] == 0.0 and full["errors"]["fabricated"] == 1


def test_pairs_never_teach_a_placeholder(schema):
    chosen = _answer(schema, sodium_meq_l=NA)             # heart rate unlabelled: null placeholder in the target
    model = _answer(schema, sodium_meq_l={**NA, "value": "141", "evidence": "Na 141"}, heart_rate_bpm=HR)
    gold = {"sodium_meq_l": 138.0}
    pair = {"id": "u1", "source": "model", "tags": ["last_value"], "fields": ["sodium_meq_l"], "prompt": [],
            "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": model}]}
    filled = fill_untrained(pair, ["heart_rate_bpm"], model)
    c, r = (json.loads(filled[k][0]["content"]) for k in ("chosen", "rejected"))
    assert c["heart_rate_bpm"] == HR == r["heart_rate_bpm"] and c["sodium_meq_l"] == NA
    assert pair_is_valid(schema, filled, gold, NOTE)
    # a synthetic trap (chosen with one field changed) gets the model's value on both sides
    trap = {**pair, "source": "synthetic", "rejected": [{"role": "assistant", "content": _answer(
        schema, sodium_meq_l={**NA, "value": "141", "evidence": "Na 141"})}]}
    filled = fill_untrained(trap, ["heart_rate_bpm"], model)
    assert all(json.loads(filled[k][0]["content"])["heart_rate_bpm"] == HR for k in ("chosen", "rejected"))
    assert fill_untrained(pair, ["heart_rate_bpm"], '{"sodium_meq_l": nul') is None   # nothing to copy: no pair


def test_sft_masks_placeholder_tokens_only(schema, tiny_llama_dir):
    from survlm.artifacts import prepared_record
    from survlm.evidence import target_text
    from survlm.modeling.loading import load_tokenizer
    from survlm.modeling.sft import tokenized_example, prompt_completion

    target = target_text(schema, {"sodium_meq_l": NA}, {f.name: "value" for f in schema if f.name != "sodium_meq_l"})
    row = prepared_record(id="u1", split="train", style="user", text=NOTE, labels={"sodium_meq_l": 138.0},
                          target=target.text, time=10.0, event=1, n_tokens=40)
    tok = load_tokenizer(tiny_llama_dir)
    ex = tokenized_example(tok, prompt_completion(row, "Extract."), target.masked)
    trained = tok.decode([t for t, m in zip(ex["input_ids"], ex["completion_mask"]) if m])
    untrained = [t for k, (t, m) in enumerate(zip(ex["input_ids"], ex["completion_mask"]))
                 if not m and k >= ex["completion_mask"].index(1)]
    assert '"value":"138"' in trained and '"evidence":"Na 138"' in trained and '"heart_rate_bpm"' in trained
    assert '"ph":,"glucose_mg_dl":,' in trained and '"unit":null' in trained   # placeholders out, a real null in
    assert tok.decode(untrained).count("null") == len(schema.names) - 1
    full = tokenized_example(tok, prompt_completion(row, "Extract."), [])       # nothing masked: TRL's own mask
    assert sum(full["completion_mask"]) > sum(ex["completion_mask"]) and full["input_ids"] == ex["input_ids"]
