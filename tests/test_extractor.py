"""Extraction runs with the real HF backend on a tiny model: long notes are chunked and merged, never cut, and an
interrupted run resumes where it stopped with the same rows a clean run writes."""
import json

from survlm.modeling.backends import BackendSettings, Decoding, HFBackend
from survlm.modeling.extractor import Task, plan_chunks, read_rows, run_tasks

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
    rows = list(read_rows(out))
    assert [r["n_chunks"] for r in rows] == [len(chunks), 1]
    assert all(r["prompt_tokens"] <= len(chunks) * 200 for r in rows)
    assert "note" not in json.dumps(rows[0]).replace('"n_chunks"', "")   # no note text in predictions


def test_resume_after_interruption_gives_identical_rows(tiny_llama_dir, schema, tmp_path):
    sub = schema.subset(["sex", "diabetes"])
    backend = HFBackend(tiny_llama_dir, {}, sub, BackendSettings(max_model_len=1024, batch_size=2))
    dec = Decoding(max_new_tokens=10, constrained=False)
    records = _records(5)
    clean = tmp_path / "clean.jsonl"
    run_tasks(backend, [Task("t", None, records, clean)], sub, SYSTEM, dec, batch_size=2, progress=False)
    # an interrupted run: two rows written, then a torn third line
    cut = tmp_path / "cut.jsonl"
    lines = clean.read_text().splitlines(keepends=True)
    cut.write_text("".join(lines[:2]) + lines[2][:15])
    (tmp_path / "cut.jsonl.run.json").write_text((tmp_path / "clean.jsonl.run.json").read_text())
    summary = run_tasks(backend, [Task("t", None, records, cut)], sub, SYSTEM, dec, batch_size=2, progress=False)
    assert summary["t"]["resumed"] == 2
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # noqa: E731
    assert strip(read_rows(cut)) == strip(read_rows(clean))
    # a different decoding is a different run: the file starts over
    summary = run_tasks(backend, [Task("t", None, records, cut)], sub, SYSTEM,
                        Decoding(max_new_tokens=4, constrained=False), batch_size=5, progress=False)
    assert summary["t"]["resumed"] == 0 and len(list(read_rows(cut))) == 5
    # fewer (or other) records, same run: rows of records the task no longer has are dropped, the rest kept
    summary = run_tasks(backend, [Task("t", None, records[:2] + _records(7)[6:], cut)], sub, SYSTEM,
                        Decoding(max_new_tokens=4, constrained=False), batch_size=5, progress=False)
    assert summary["t"]["resumed"] == 2 and [r["id"] for r in read_rows(cut)] == ["r0", "r1", "r6"]


def test_progress_moves_per_answered_prompt_not_per_batch(tiny_llama_dir, schema, tmp_path, monkeypatch):
    import tqdm

    updates = []

    class Bar:
        def __init__(self, total, **kw):
            self.total = total

        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    sub = schema.subset(["sex"])
    backend = HFBackend(tiny_llama_dir, {}, sub, BackendSettings(max_model_len=1024, batch_size=2))
    task = Task("t", None, _records(5), tmp_path / "t.jsonl")
    run_tasks(backend, [task], sub, "Extract.", Decoding(max_new_tokens=8, constrained=False), batch_size=5)
    assert updates == [2, 2, 1]                   # one run_tasks batch, three generate steps of the backend
    assert backend.progress is None               # the bar is detached when the run ends
