"""Long notes: overlapping chunks that fit the budget, and the documented per-field merge rule."""
from hypothesis import given, settings
from hypothesis import strategies as st

from survlm.chunking import merge_chunks, split_note
from survlm.extraction import FieldResult
from survlm.metrics import tolerance


def words(text: str) -> int:
    return len(text.split())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=40),
       st.integers(min_value=5, max_value=60), st.integers(min_value=0, max_value=10))
def test_chunks_cover_the_note_within_budget(line_lengths, budget, overlap):
    note = "".join(" ".join(f"w{i}_{j}" for j in range(n)) + "\n" for i, n in enumerate(line_lengths))
    chunks = split_note(note, words, budget, overlap)
    assert all(words(c.text) <= budget for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(note)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start <= a.end and b.start > a.start        # contiguous or overlapping, always progressing
    assert all(note[c.start:c.end] == c.text for c in chunks)
    seen = set()
    for c in chunks:
        seen.update(c.text.split())
    assert seen == set(note.split())                          # nothing dropped


def test_short_note_is_one_chunk_and_overlap_is_shared():
    assert len(split_note("a b c\n", words, 10, 2)) == 1
    note = "".join(f"l{i} x x x\n" for i in range(10))       # 4 words per line
    chunks = split_note(note, words, budget=12, overlap=4)
    assert len(chunks) > 2
    assert chunks[0].text.splitlines()[-1] == chunks[1].text.splitlines()[0]   # one line (4 words) shared


def _ok(v, written=None):
    return FieldResult("ok", value=v, written=written)


def test_merge_rule(schema):
    nulls = {f.name: FieldResult("null") for f in schema}
    c1 = dict(nulls, sodium_meq_l=_ok(138.0), sex=_ok("male"),
              num_comorbidities=_ok(2, {"value": ["CKD", "prior stroke"]}))
    c2 = dict(nulls, sodium_meq_l=_ok(142.0), sex=FieldResult("invalid_category"),
              num_comorbidities=_ok(2, {"value": ["ckd", "HIV"]}))
    c3 = dict(nulls, sodium_meq_l=_ok(142.4), glucose_mg_dl=FieldResult("unknown_unit"))
    merged, conflicts = merge_chunks(schema, [c1, c2, c3], tolerance)
    assert merged["sodium_meq_l"].value == 142.0              # two chunks agree (within tolerance) over one
    assert merged["sex"].value == "male"                      # ok beats a failure
    assert merged["num_comorbidities"].value == 3             # union of listed items, case-insensitive
    assert merged["glucose_mg_dl"].status == "null"           # no ok answer: null wins over a failure
    assert merged["albumin_g_dl"].status == "null"
    assert set(conflicts) == {"sodium_meq_l", "num_comorbidities"}
    tie, _ = merge_chunks(schema, [dict(nulls, sodium_meq_l=_ok(131.0)), dict(nulls, sodium_meq_l=_ok(138.0))],
                          tolerance)
    assert tie["sodium_meq_l"].value == 131.0                 # a tie goes to the chunk that comes first
    failed, _ = merge_chunks(schema, [dict(nulls, ph=FieldResult("bad_value"))], tolerance)
    assert failed["ph"].status == "bad_value"                  # nothing better: the failure is kept


def test_token_offsets_give_the_same_chunks_as_counting():
    """With the note's token starts (one tokenizer pass), spans are counted without re-tokenizing them."""
    import re

    note = "".join(" ".join(f"w{i}_{j}" for j in range(n)) + "\n" for i, n in enumerate([3, 40, 7, 1, 25, 9] * 5))
    starts = [m.start() for m in re.finditer(r"\S+", note)]
    calls = []

    def counting(text):
        calls.append(text)
        return words(text)

    assert split_note(note, counting, 12, 4, starts) == split_note(note, words, 12, 4)
    assert calls == []
