"""A researcher's own file: every problem is one line `file:line: field: problem`."""
import json

import pandas as pd
import pytest

from survlm.data.userfile import UserDataError, load_user_records

GOOD = {"id": "a1", "text": "HD3 Na 140", "time": 12, "event": 1}


def _jsonl(tmp_path, rows, raw_lines=()):
    p = tmp_path / "notes.jsonl"
    body = b"".join((json.dumps(r) + "\n").encode() for r in rows) + b"".join(raw_lines)
    p.write_bytes(body)
    return p


def _problems(path, schema):
    with pytest.raises(UserDataError) as exc:
        load_user_records(path, schema)
    lines = str(exc.value).splitlines()
    assert lines == exc.value.problems
    return lines


def test_good_jsonl_csv_parquet(tmp_path, schema):
    rows = [GOOD, {**GOOD, "id": "a2", "event": 0, "sodium_meq_l": 139, "sex": "Female", "diabetes": "yes"}]
    recs = load_user_records(_jsonl(tmp_path, rows), schema)
    assert [r["id"] for r in recs] == ["a1", "a2"]
    assert recs[1]["labels"]["sodium_meq_l"] == 139 and recs[1]["labels"]["sex"] == "female"
    assert recs[1]["labels"]["diabetes"] is True and recs[0]["labels"]["sodium_meq_l"] is None
    csv_path = tmp_path / "notes.csv"
    pd.DataFrame(rows).to_csv(csv_path, index=False)
    assert [r["labels"]["sodium_meq_l"] for r in load_user_records(csv_path, schema)] == [None, 139]
    pq = tmp_path / "notes.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    assert len(load_user_records(pq, schema)) == 2


def test_every_problem_is_reported_with_file_line_field(tmp_path, schema):
    rows = [
        GOOD,
        {**GOOD, "id": "a1"},                          # 2 duplicate id
        {**GOOD, "id": "b", "text": "  "},             # 3 empty text
        {**GOOD, "id": "c", "time": "soon"},           # 4 non-numeric time
        {**GOOD, "id": "d", "time": -3},               # 5 negative time
        {**GOOD, "id": "e", "event": 2},               # 6 event not 0/1
        {**GOOD, "id": "f", "labels": {"lactate": 2.1}},  # 7 unknown field (a column of its own is metadata)
        {**GOOD, "id": "g", "sodium_meq_l": 400},      # 8 out of range
        {**GOOD, "id": "h", "sex": "unknown"},         # 9 bad category
    ]
    p = _jsonl(tmp_path, rows, [b'{"id": "i", "text": \n', b'{"id": "j", "text": "caf\xe9"}\n'])
    lines = _problems(p, schema)
    expected = [
        f"{p}:2: id: duplicate id 'a1'",
        f"{p}:3: text: missing or empty",
        f"{p}:4: time: not a number",
        f"{p}:5: time: negative",
        f"{p}:6: event: must be 0 or 1",
        f"{p}:7: lactate: label of unknown field",
        f"{p}:8: sodium_meq_l: 400 is outside the plausible range",
        f"{p}:9: sex: 'unknown' is not one of male, female",
        f"{p}:10: record: bad JSON",
        f"{p}:11: record: undecodable bytes",
    ]
    assert len(lines) == len(expected)
    for line, start in zip(sorted(lines, key=lambda s: int(s.split(":")[1])), expected):
        assert line.startswith(start), (line, start)


def test_csv_line_numbers_and_bytes(tmp_path, schema):
    p = tmp_path / "notes.csv"
    p.write_bytes(b"id,text,time,event\nx,ok,1,0\ny,,2,1\nz,ok,3,7\nw,\xff\xfe,1,1\n")
    lines = _problems(p, schema)
    assert lines == [f"{p}:5: record: undecodable bytes at column 3 (not UTF-8)"]
    p.write_bytes(b"id,text,time,event\nx,ok,1,0\ny,,2,1\nz,ok,3,7\n")
    assert _problems(p, schema) == [f"{p}:3: text: missing or empty", f"{p}:4: event: must be 0 or 1 (got '7')"]


def test_unsupported_and_missing_files(tmp_path, schema):
    assert _problems(tmp_path / "nope.jsonl", schema) == [f"{tmp_path / 'nope.jsonl'}: file: not found"]
    (tmp_path / "adir.jsonl").mkdir()
    assert _problems(tmp_path / "adir.jsonl", schema) == [
        f"{tmp_path / 'adir.jsonl'}: file: is a directory, not a notes file"]
    p = tmp_path / "notes.txt"
    p.write_text("x")
    assert _problems(p, schema)[0].endswith("unsupported extension '.txt' (use .jsonl, .csv or .parquet)")


def test_cli_validate(tmp_path, schema, capsys):
    from survlm.cli import main

    good = _jsonl(tmp_path, [GOOD])
    assert main(["validate", str(good)]) == 0
    assert "1 records OK" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "text": "t", "time": 1, "event": 5}\n')
    assert main(["validate", str(bad)]) == 1
    assert capsys.readouterr().err.strip() == f"{bad}:1: event: must be 0 or 1 (got 5)"


def test_extra_columns_are_metadata_and_a_blank_cell_is_no_label(tmp_path, schema, capsys):
    from survlm.cli import main

    rows = [{**GOOD, "mrn": "A-1", "note_date": "2024-03-01", "sodium_meq_l": "null", "ph": None,
             "heart_rate_bpm": 88},
            {**GOOD, "id": "a2", "mrn": "A-2", "note_date": None, "sodium_meq_l": 139, "ph": 7.3,
             "heart_rate_bpm": None}]
    p = tmp_path / "notes.csv"
    pd.DataFrame(rows).to_csv(p, index=False)
    recs = load_user_records(p, schema)
    assert recs[0]["metadata"] == {"mrn": "A-1", "note_date": "2024-03-01"}
    assert recs[1]["metadata"] == {"mrn": "A-2", "note_date": None}
    # "null": the note has no value; an empty cell: nobody said (unknown, never trained or scored as null)
    assert recs[0]["labelled"] == ["heart_rate_bpm", "sodium_meq_l"] and recs[0]["labels"]["sodium_meq_l"] is None
    assert recs[1]["labelled"] == ["ph", "sodium_meq_l"]
    assert main(["validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert out.count("metadata columns (kept and passed through to `survlm extract`): mrn, note_date") == 1
    assert "labels in their notes: " in out and "HD3 Na 140" not in out


HEAD = b"id,text,time,event\n"
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("name,body,expected", [
    # an unclosed quote must not swallow the rest of the file into one cell
    ("notes.csv", HEAD + b'x,ok,1,0\ny,"open,2,1\nz,ok,3,0\nw,ok,4,1\n', ':3: record: bad CSV'),
    ("notes.csv", b"id,text,time,event,text\nx,a,1,0\n", ":1: header: duplicate column 'text'"),
    ("notes.jsonl", b'{"id": "a", "text": "x", "time": 1, "event": 0, "text": "y"}\n', ":1: record: duplicate key 'text'"),
    ("notes.jsonl", b'{"id": "a", "text": "x", "time": 1' + b"0" * 400 + b', "event": 0}\n', ":1: time: not a number"),
    ("notes.jsonl", b'{"id": "a", "text": "x", "time": 1, "event": 0, "sodium_meq_l": 1' + b"0" * 400 + b"}\n",
     ":1: sodium_meq_l: not a number"),
    ("notes.jsonl", b'{"id": "a", "text": "x", "time": 1' + b"0" * 5000 + b', "event": 0}\n',
     ":1: record: bad JSON (a number with too many digits)"),
    ("notes.jsonl", b'{"id": "a", "text": "x", "time": 1, "event": 0, "extra": ' + DEEP + b"}\n",
     ":1: record: bad JSON (nested too deeply)"),
    ("notes.jsonl", b'{"id": "a", "text": "x\\ud800y", "time": 1, "event": 0}\n',
     ":1: text: not valid Unicode (a lone surrogate at character 2)"),
    ("notes.jsonl", b'{"id": "\\udfff", "text": "x", "time": 1, "event": 0}\n', ":1: id: not valid Unicode"),
    ("notes.jsonl", b'{"id": {"a": 1}, "text": "x", "time": 1, "event": 0}\n', ":1: id: must be text or a number"),
])
def test_hostile_files_give_one_line_and_no_traceback(tmp_path, capsys, name, body, expected):
    from survlm.cli import main

    p = tmp_path / name
    p.write_bytes(body)
    assert main(["validate", str(p)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{p}{expected}"), err
