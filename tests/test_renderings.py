"""prepare.renderings_per_patient: every training patient as several notes (other styles, other render seeds),
each checked against the renderer invariants; train.jsonl stays one row per patient, and sft reads both."""
import json


def _prepare(tmp_path, tiny_llama_dir, name, renderings):
    from survlm.config import parse_section
    from survlm.stages.prepare import prepare

    params = parse_section("prepare", {
        "source": "support2", "schema": "bundled:support2-v1", "seed": 42, "note_tokens": 600, "prompt": "brief",
        "styles": ["flowsheet", "discharge", "signout", "progress", "nursing"], "heldout_styles": ["nursing"],
        "split": {"train": 0.6, "val": 0.1, "pairs": 0.1, "test": 0.2}, "alt_unit_rate": 0.3, "derived_rate": 0.3,
        "max_patients": 40, "renderings_per_patient": renderings, "workers": 1})
    out = tmp_path / name
    metrics = prepare(params, str(tiny_llama_dir), str(out), str(tmp_path / f"{name}.json"))
    return out, metrics


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_renderings_per_patient(tiny_llama_dir, tmp_path, schema):
    from survlm.artifacts import note_of, target_of
    from survlm.metrics import tolerance, values_match
    from survlm.modeling.sft import training_rows

    one, m1 = _prepare(tmp_path, tiny_llama_dir, "one", 1)
    three, m3 = _prepare(tmp_path, tiny_llama_dir, "three", 3)
    for split in ("train", "val", "pairs", "test", "test_heldout"):       # the one-per-patient files do not change
        assert (one / f"{split}.jsonl").read_bytes() == (three / f"{split}.jsonl").read_bytes()
    assert (one / "train_renderings.jsonl").read_text() == "" and m1["train_renderings"]["notes"] == 0
    assert m3["patients"] == m1["patients"] == 40 and m3["splits"] == m1["splits"]
    train = {r["id"]: r for r in _rows(three / "train.jsonl")}
    extra = _rows(three / "train_renderings.jsonl")
    assert len(extra) == 2 * len(train) == m3["train_renderings"]["notes"]
    meta = {m["id"] for m in _rows(three / "render_meta.jsonl")}
    for r in extra:
        first = train[r["patient"]]
        assert r["id"].startswith(r["patient"] + "/r") and r["id"] in meta
        for f in schema:  # the same patient's values; each note's label is computed from its own written unit
            a, b = r["labels"][f.name], first["labels"][f.name]
            assert (a is None) == (b is None)
            assert a == b if a is None or f.type != "number" else values_match(a, b, tolerance(f)), f.name
        assert note_of(r) != note_of(first)
        assert target_of(r) != target_of(first)                            # evidence spans follow the note
        assert r["style"] != "nursing"                                    # the held-out style stays held out
    styles = {}
    for r in extra:
        styles.setdefault(r["patient"], {train[r["patient"]]["style"]}).add(r["style"])
    assert all(len(s) == 3 for s in styles.values())                     # three training styles per patient
    head = training_rows(three, 2)
    assert [r["id"] for r in head[:2]] == list(train)[:2]
    assert sorted(r["id"] for r in head[2:]) == sorted(f"{p}/r{k}" for p in list(train)[:2] for k in (1, 2))


def test_renderings_land_in_different_families_seeded(tiny_llama_dir, tmp_path, schema):
    """With the chart families in the style list: a training patient's renderings are each in another training
    family (none of them the held-out one), other splits have one note per patient, and the assignment is seeded."""
    from survlm.config import parse_section
    from survlm.notes.render import STYLES
    from survlm.stages.prepare import prepare

    def run(name, seed):
        params = {
            "source": "support2", "schema": "bundled:support2-v1", "seed": seed, "note_tokens": 600, "prompt": "brief",
            "styles": list(STYLES), "heldout_styles": ["handoff"],
            "split": {"train": 0.6, "val": 0.1, "pairs": 0.1, "test": 0.2}, "alt_unit_rate": 0.3,
            "derived_rate": 0.3, "max_patients": 30, "renderings_per_patient": 5, "workers": 1}
        metrics = prepare(parse_section("prepare", params), str(tiny_llama_dir), str(tmp_path / name),
                          str(tmp_path / f"{name}.json"))
        return tmp_path / name, metrics

    out, metrics = run("a", 42)
    train = {r["id"]: r for r in _rows(out / "train.jsonl")}
    styles = {p: [r["style"]] for p, r in train.items()}
    for r in _rows(out / "train_renderings.jsonl"):
        styles[r["patient"]].append(r["style"])
    assert len(train) > 10 and all(len(s) == 5 == len(set(s)) for s in styles.values())
    assert all("handoff" not in s for s in styles.values())
    families = {"labsheet", "datagrid", "narrative"}
    assert any(families & set(s) for s in styles.values())              # the families take part in training
    assert metrics["train_renderings"]["notes"] == 4 * len(train)
    for split in ("val", "pairs", "test", "test_heldout"):
        rows = _rows(out / f"{split}.jsonl")
        assert len({r["id"] for r in rows}) == len(rows) and all("/r" not in r["id"] for r in rows)
    assert {r["style"] for r in _rows(out / "test_heldout.jsonl")} <= {"handoff"}
    again, _ = run("b", 42)
    assert (again / "train_renderings.jsonl").read_bytes() == (out / "train_renderings.jsonl").read_bytes()
    other, _ = run("c", 43)
    assert (other / "train_renderings.jsonl").read_bytes() != (out / "train_renderings.jsonl").read_bytes()
