"""Extraction runs with the real HF backend on a tiny model: long notes are chunked and merged, never cut, and an
interrupted run resumes where it stopped with the same rows a clean run writes."""
import json

from survlm.modeling.backends import BackendSettings, Decoding, HFBackend
from survlm.artifacts import read_jsonl
from survlm.modeling.extractor import Task, plan_chunks, run_tasks

SYSTEM = "Extract the fields as JSON."


def _records(n, lines=3):
    return [{"id": f"r{i}", "note": "".join(f"HD{d} HR 8{d} T 37.{d} C Na 13{d}\n" for d in range(1, lines + 1))
             + f"patient {i}\n"} for i in range(n)]


def test_long_note_is_chunked_not_truncated(tiny_llama_dir, schema, tmp_path):
    sub = schema.subset(["sex", "diabetes"])
    backend = HFBackend(tiny_llama_dir, {}, sub, BackendSettings(max_model_len=200, batch_size=4))
    dec = Decoding(max_new_tokens=8, constrained=False)
    long = _records(1, lines=40)[0]
    chunks = plan_chunks(backend, SYSTEM, long["note"], dec, overlap=10)
    assert len(chunks) > 2 and all(c in long["note"] for c in chunks)
    assert chunks[0].startswith("HD1") and long["note"].endswith(chunks[-1])
    out = tmp_path / "p.jsonl"
    summary = run_tasks(backend, [Task("t", None, [long] + _records(1), out)], sub, SYSTEM, dec, chunk_overlap=10,
                        progress=False)
    assert summary["t"] == {"notes": 2, "resumed": 0, "chunked_notes": 1}
    rows = list(read_jsonl(out))
    assert [r["n_chunks"] for r in rows] == [len(chunks), 1]
    assert all(r["prompt_tokens"] <= len(chunks) * 200 for r in rows)
    assert "note" not in json.dumps(rows[0]).replace('"n_chunks"', "").replace('"note_sha256"', "")  # no note text



def test_infer_counts_chunked_notes_and_the_fields_their_chunks_disagreed_on():
    """metrics/infer.json per task, from the task's rows: a field its chunks disagreed on counts once a note."""
    from survlm.stages.infer import task_summary

    def row(n_chunks, conflicts, finish, statuses):
        return {"n_chunks": n_chunks, "chunk_conflicts": conflicts, "completion_tokens": 5 * n_chunks,
                "prompt_tokens": 100 * n_chunks, "finish_reasons": finish,
                "fields": {f"f{i}": {"status": s} for i, s in enumerate(statuses)}}

    rows = [row(3, ["sodium_meq_l", "ph"], ["stop", "length", "stop"], ["ok", "null"]),
            row(2, [], ["stop", "stop"], ["ok", "ok"]), row(1, [], ["length"], ["refused", "ok"])]
    assert task_summary(rows) == {"rows": 3, "chunked_notes_total": 2, "chunk_conflicts": 2,
                                  "completion_tokens": 30, "prompt_tokens": 600, "hit_max_new_tokens": 2,
                                  "statuses": {"null": 1, "ok": 4, "refused": 1}}

def _clean_run(model_dir, schema, out, n):
    """n notes answered start to end: (schema subset, backend, decoding, records)."""
    sub = schema.subset(["sex", "diabetes"])
    backend = HFBackend(model_dir, {}, sub, BackendSettings(max_model_len=1024, batch_size=2))
    dec = Decoding(max_new_tokens=10, constrained=False)
    records = _records(n)
    run_tasks(backend, [Task("t", None, records, out)], sub, SYSTEM, dec, progress=False)
    return sub, backend, dec, records


def test_resume_after_interruption_gives_identical_rows(tiny_llama_dir, schema, tmp_path):
    clean = tmp_path / "clean.jsonl"
    sub, backend, dec, records = _clean_run(tiny_llama_dir, schema, clean, 5)
    # an interrupted run: two rows written, then a torn third line
    cut = tmp_path / "cut.jsonl"
    lines = clean.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:2]) + lines[2][:15])
    (tmp_path / "cut.jsonl.run.json").write_text((tmp_path / "clean.jsonl.run.json").read_text())
    summary = run_tasks(backend, [Task("t", None, records, cut)], sub, SYSTEM, dec, progress=False)
    assert summary["t"]["resumed"] == 2
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # noqa: E731
    assert strip(read_jsonl(cut)) == strip(read_jsonl(clean))
    # a different decoding is a different run: the file starts over
    summary = run_tasks(backend, [Task("t", None, records, cut)], sub, SYSTEM,
                        Decoding(max_new_tokens=4, constrained=False), progress=False)
    assert summary["t"]["resumed"] == 0 and len(list(read_jsonl(cut))) == 5
    # fewer (or other) records, same run: rows of records the task no longer has are dropped, the rest kept
    summary = run_tasks(backend, [Task("t", None, records[:2] + _records(7)[6:], cut)], sub, SYSTEM,
                        Decoding(max_new_tokens=4, constrained=False), progress=False)
    assert summary["t"]["resumed"] == 2 and [r["id"] for r in read_jsonl(cut)] == ["r0", "r1", "r6"]


def test_resumed_rows_read_by_other_parsing_code_are_read_again(tiny_llama_dir, schema, tmp_path):
    """A row whose fields other code read is read again from its raw answer; a row that does not hold its whole
    answer (two chunks' raw answers) is asked again. Either way the rows are those of a clean run."""
    from survlm.predictions import parser_digest

    clean = tmp_path / "clean.jsonl"
    sub, backend, dec, records = _clean_run(tiny_llama_dir, schema, clean, 4)
    rows = list(read_jsonl(clean))
    assert all(r["parser"] == parser_digest() for r in rows)
    stale = [dict(r, parser="older code", fields={n: {"status": "ok", "value": 1} for n in r["fields"]})
             for r in rows]
    stale[1]["raw"] = stale[1]["raw"] * 2
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps(r) + "\n" for r in stale))
    (tmp_path / "old.jsonl.run.json").write_text((tmp_path / "clean.jsonl.run.json").read_text())
    summary = run_tasks(backend, [Task("t", None, records, old)], sub, SYSTEM, dec, progress=False)
    assert summary["t"]["resumed"] == 3 and summary["t"]["resumed_reread"] == 3
    strip = lambda rows: {r["id"]: {k: v for k, v in r.items() if k != "latency_s"} for r in rows}  # noqa: E731
    assert strip(read_jsonl(old)) == strip(rows)


def test_resume_never_reuses_an_answer_for_changed_input(tiny_llama_dir, schema, tmp_path, monkeypatch):
    """An edited note, another base model with the same config, other code scoring confidences, or another
    grammar constraining the answer: asked again; unchanged notes are not."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from survlm.modeling.extractor import note_digest

    sub = schema.subset(["sex", "diabetes"])
    backend = HFBackend(tiny_llama_dir, {}, sub, BackendSettings(max_model_len=1024, batch_size=2))
    dec = Decoding(max_new_tokens=6, constrained=False)
    records = _records(4)
    out = tmp_path / "p.jsonl"
    run_tasks(backend, [Task("t", None, records, out)], sub, SYSTEM, dec, progress=False)
    edited = [dict(r) for r in records]
    edited[2]["note"] = edited[2]["note"].replace("HR 81", "HR 99")      # the same id, another text
    summary = run_tasks(backend, [Task("t", None, edited, out)], sub, SYSTEM, dec, progress=False)
    assert summary["t"]["resumed"] == 3
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert sorted(rows) == ["r0", "r1", "r2", "r3"]
    assert rows["r2"]["note_sha256"] == note_digest(edited[2]["note"]) != note_digest(records[2]["note"])

    other = tmp_path / "other-base"                      # same config.json and tokenizer, other weights
    shutil.copytree(tiny_llama_dir, other)
    weights = load_file(other / "model.safetensors")
    save_file({k: v + 0.01 * torch.ones_like(v) for k, v in weights.items()}, other / "model.safetensors",
              metadata={"format": "pt"})
    backend2 = HFBackend(other, {}, sub, BackendSettings(max_model_len=1024, batch_size=2))
    summary = run_tasks(backend2, [Task("t", None, edited, out)], sub, SYSTEM, dec, progress=False)
    assert summary["t"]["resumed"] == 0 and len(list(read_jsonl(out))) == 4
    assert run_tasks(backend2, [Task("t", None, edited, out)], sub, SYSTEM, dec, progress=False)["t"]["resumed"] == 4

    from survlm.modeling import extractor

    monkeypatch.setattr(extractor, "_confidence_code", lambda: "other code")
    summary = run_tasks(backend2, [Task("t", None, edited, out)], sub, SYSTEM, dec, progress=False)
    assert summary["t"]["resumed"] == 0 and len(list(read_jsonl(out))) == 4

    constrained = Decoding(max_new_tokens=6, constrained=True)      # and another grammar for the same schema
    run_tasks(backend2, [Task("t", None, edited, out)], sub, SYSTEM, constrained, progress=False)
    backend2.__dict__["grammar_text"] = backend2.grammar_text.replace("root ::= ", "root ::= \"\" ", 1)
    summary = run_tasks(backend2, [Task("t", None, edited, out)], sub, SYSTEM, constrained, progress=False)
    assert summary["t"]["resumed"] == 0 and len(list(read_jsonl(out))) == 4


def test_a_note_that_cannot_be_planned_changes_nothing_on_disk(tiny_llama_dir, schema, tmp_path):
    import pytest

    from survlm.modeling.extractor import ContextTooSmall

    sub = schema.subset(["sex", "diabetes"])
    records = _records(2)
    out = tmp_path / "p.jsonl"
    small = HFBackend(tiny_llama_dir, {}, sub, BackendSettings(max_model_len=60, batch_size=2))
    with pytest.raises(ContextTooSmall):
        run_tasks(small, [Task("t", None, records, out)], sub, SYSTEM, Decoding(max_new_tokens=8), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_huge_one_line_note_is_planned_from_one_tokenizer_pass(tiny_llama_dir, schema):
    """A note of one long line (no newlines at all) is cut on whitespace at token offsets: the tokenizer reads the
    note once, not once per word."""
    sub = schema.subset(["sex", "diabetes"])
    backend = HFBackend(tiny_llama_dir, {}, sub, BackendSettings(max_model_len=1024, batch_size=1))
    note = " ".join(f"HR {80 + i % 20} T 37.{i % 10} C" for i in range(6000))   # ~36k tokens on one line
    calls = []
    real = backend.count_tokens
    backend.count_tokens = lambda text: calls.append(len(text)) or real(text)
    chunks = plan_chunks(backend, SYSTEM, note, Decoding(max_new_tokens=64), overlap=32)
    assert len(calls) <= 2                                  # the note-less prompt, nothing per word
    assert len(chunks) > 30 and all(c in note for c in chunks)
    assert note.startswith(chunks[0]) and note.endswith(chunks[-1])
    prompts = [backend.prompt_text([{"role": "system", "content": SYSTEM}, {"role": "user", "content": c}],
                                   Decoding(max_new_tokens=64)) for c in chunks]
    assert max(real(p) for p in prompts) + 64 <= 1024        # every chunk's prompt leaves room for the answer


def test_one_adapter_under_two_names_is_asked_once_per_note(tiny_lora_pair, schema, tmp_path):
    """Where dpo ships the SFT adapter itself, infer's `dpo` and `sft` rows come from one request per note:
    asked twice, a batching engine may answer them apart and one model would score as two."""
    import shutil

    base, lora = tiny_lora_pair
    same = tmp_path / "same"
    shutil.copytree(lora, same)
    sub = schema.subset(["sex", "diabetes"])
    backend = HFBackend(base, {"dpo": str(lora), "sft": str(same)}, sub,
                        BackendSettings(max_model_len=1024, batch_size=4, quantization="none"))
    asked = []
    stream = backend.stream
    backend.stream = lambda prompts, decodings, adapters: (asked.extend(adapters), stream(prompts, decodings, adapters))[1]
    records = _records(3)
    greedy, sample = Decoding(max_new_tokens=6, constrained=False), Decoding(strategy="sample", max_new_tokens=6,
                                                                             constrained=False)
    tasks = [Task("dpo/t", "dpo", records, tmp_path / "dpo.jsonl"), Task("sft/t", "sft", records, tmp_path / "sft.jsonl"),
             Task("zero_shot/t", None, records, tmp_path / "zs.jsonl"),
             Task("dpo/s", "dpo", records, tmp_path / "dpo_s.jsonl", sample),
             Task("sft/s", "sft", records, tmp_path / "sft_s.jsonl", sample)]
    summary = run_tasks(backend, tasks, sub, SYSTEM, greedy, progress=False)
    assert asked == ["dpo"] * 3 + [None] * 3 + ["dpo"] * 3 + ["sft"] * 3   # samples are never shared
    assert summary["sft/t"]["shared_answers"] == 3
    assert all("shared_answers" not in summary[t.name] for t in tasks if t.name != "sft/t")
    keep = lambda rows: [{k: v for k, v in r.items() if k not in ("task", "adapter", "latency_s")} for r in rows]  # noqa: E731
    assert keep(read_jsonl(tmp_path / "sft.jsonl")) == keep(read_jsonl(tmp_path / "dpo.jsonl"))
    assert [r["adapter"] for r in read_jsonl(tmp_path / "sft.jsonl")] == ["sft"] * 3
