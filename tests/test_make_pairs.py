"""The make_pairs stage end to end: a tiny random Llama with a LoRA adapter answers real rendered notes (HF
backend) through one extraction run, and the stage writes balanced single-field pairs, shuffled, with counts by
direction and type; a rerun answers only the notes it has no answer for."""
import json

from conftest import pairs_args, pairs_workdir, run_stage_here


def _pairs(work) -> list[dict]:
    return [json.loads(line) for f in ("train", "eval") for line in (work / "pairs" / f"{f}.jsonl").open()]


def test_make_pairs_stage_single_field_balanced(tiny_lora_pair, schema, support2_rows, tmp_path):
    from survlm.artifacts import chat_prompt, first_records
    from survlm.pairs import pair_direction

    base, lora = tiny_lora_pair
    work = pairs_workdir(tmp_path, support2_rows[:6], schema)
    run_stage_here("make_pairs", pairs_args(base, lora), work)
    m = json.loads((work / "m.json").read_text())
    pairs = _pairs(work)
    assert len(pairs) == m["pairs"] == m["train_pairs"] + m["eval_pairs"] > 0
    assert m["single_field"] is True and m["balance"]["after"]["by_direction"] == m["by_direction"]
    v2n, n2v = m["by_direction"].get("value_to_null", 0), m["by_direction"].get("null_to_value", 0)
    assert max(v2n, n2v) <= max(min(v2n, n2v), 1)
    assert m["balance"]["before"]["by_type"] != m["balance"]["after"]["by_type"]    # the cap did something
    by_id = {r["id"]: r for r in first_records(work / "prepared" / "pairs.jsonl", None)}
    for p in pairs:   # DPO's prompt: the prepared prompt and the note, built from the plain record
        assert p["prompt"] == chat_prompt("Extract.", by_id[p["id"]])
        assert p["rejected"][0]["content"] != p["chosen"][0]["content"] and len(p["fields"]) == 1
        assert p["direction"] == pair_direction(p["chosen"][0]["content"], p["rejected"][0]["content"])
    train_ids = [json.loads(line)["id"] for line in (work / "pairs" / "train.jsonl").open()]
    assert train_ids != sorted(train_ids)           # a seeded shuffle (dpo.max_pairs then samples), not note order
    assert m["generation"] == {task: {"notes": 6, "resumed": 0, "chunked_notes": 0}
                               for task in ("make_pairs/greedy", "make_pairs/sampled")}


def test_the_answers_are_one_backend_call_of_every_note_greedy_then_sampled(tiny_lora_pair, schema, support2_rows,
                                                                            tmp_path):
    """Notes that fit the context are asked exactly what one `generate` call of the notes asks: each note's greedy
    answer, then each note's `samples` sampled ones, in note order. The answers, and the pairs made from them, are
    therefore those of that call; with batch_size 2 one batch mixes greedy and sampled requests."""
    from survlm.artifacts import first_records, load_prompt, note_of
    from survlm.config import load_config
    from survlm.modeling.backends import Decoding, make_backend
    from survlm.phases import Phases
    from survlm.stages.make_pairs import sample_completions

    base, lora = tiny_lora_pair
    work = pairs_workdir(tmp_path, support2_rows[:5], schema, {"samples": 2, "engine": {"batch_size": 2}})
    params = load_config("make_pairs", work / "params.yaml")
    prompt_schema, system = load_prompt(work / "prepared")
    rows = first_records(work / "prepared" / "pairs.jsonl", None)
    phases = Phases(startup=False)
    got, counts = sample_completions(base, lora, rows, prompt_schema, system, params, work / "answers", phases)
    assert [c["chunked_notes"] for c in counts.values()] == [0, 0]
    assert list(phases.seconds) == ["engine_start", "generation", "engine_close"]
    assert phases.as_dict()["generation"] > 0

    args = {**params.decoding_args(), "temperature": params.temperature, "top_p": params.top_p}
    n = len(rows)
    decodings = [Decoding(strategy="greedy", **args)] * n + [Decoding(strategy="sample", n=2, **args)] * n
    prompts = [[{"role": "system", "content": system}, {"role": "user", "content": note_of(r)}] for r in rows]
    backend = make_backend("hf", base, {"sft": lora}, prompt_schema, params.engine)
    gens = backend.generate(prompts * 2, decodings, "sft")
    assert got == [[g.text for g in gens[i] + gens[n + i]] for i in range(n)]
    assert all(len(texts) == 3 for texts in got) and len({t for texts in got for t in texts[1:]}) > 1


def test_long_notes_are_chunked_and_a_rerun_answers_only_changed_notes(tiny_lora_pair, schema, support2_rows,
                                                                       tmp_path):
    """A context too small for a note: its answers are its chunks' merged. A rerun reuses every answer, and after a
    note's text changes, answers that note alone again."""
    from survlm.artifacts import note_of, read_jsonl
    from survlm.extraction import parse_answer
    from survlm.modeling.extractor import answer_texts, note_digest

    base, lora = tiny_lora_pair
    work = pairs_workdir(tmp_path, support2_rows[:4], schema, {"notes": 4, "samples": 2,
                                                                   "engine": {"max_model_len": 800}})
    args = pairs_args(base, lora)
    run_stage_here("make_pairs", args, work)
    first = json.loads((work / "m.json").read_text())
    assert all(c["chunked_notes"] >= 2 and c["resumed"] == 0 for c in first["generation"].values())
    assert first["completions"] == 4 * 3 and first["pairs"] > 0
    answers = {f: {r["id"]: r for r in read_jsonl(work / "answers" / f"{f}.jsonl")} for f in ("greedy", "sampled")}
    notes = {r["id"]: note_of(r) for r in read_jsonl(work / "prepared" / "pairs.jsonl")}
    chunked = [r for r in answers["greedy"].values() if r["n_chunks"] > 1]
    for row in chunked:   # the merged answer written out reads back as the row's fields (those written)
        reread = parse_answer(row["answers"][0], schema, notes[row["id"]])
        written = {k: f for k, f in row["fields"].items() if "written" in f or f["status"] == "null"}
        assert written and {k: (reread[k].status, reread[k].value) for k in written} == {
            k: (f["status"], f.get("value")) for k, f in written.items()}
    assert chunked and all(len(answer_texts(r)) == 2 for r in answers["sampled"].values())
    pairs = _pairs(work)

    run_stage_here("make_pairs", args, work)
    again = json.loads((work / "m.json").read_text())
    assert all(c["resumed"] == 4 for c in again["generation"].values())
    assert _pairs(work) == pairs

    records = list(read_jsonl(work / "prepared" / "pairs.jsonl"))
    records[1]["text"] += "Seen by the night team.\n"
    (work / "prepared" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run_stage_here("make_pairs", args, work)
    changed = json.loads((work / "m.json").read_text())
    assert all(c["resumed"] == 3 for c in changed["generation"].values())
    for f, before in answers.items():
        now = {r["id"]: r for r in read_jsonl(work / "answers" / f"{f}.jsonl")}
        assert now["p1"]["note_sha256"] == note_digest(note_of(records[1]))
        assert now["p1"]["note_sha256"] != before["p1"]["note_sha256"]
        assert {k: v for k, v in now.items() if k != "p1"} == {k: v for k, v in before.items() if k != "p1"}
