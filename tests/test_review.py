"""The evidence review page: quoted spans found in the note and highlighted, each field's value, unit and status
beside them, everything escaped, nothing fetched."""
import re

from survlm.extraction import compact_json, parse_answer
from survlm.predictions import result_to_json
from survlm.review import find_span, review_html

NOTE = ("Admitted 3/1.\nHD3:  HR   112, temp 101.3 F <febrile>.\nHD5: HR 90.\nNa 140 on HD3; "
        "K & Cl unremarkable.")


def _fields(schema, answer):
    results = parse_answer(compact_json(answer), schema, NOTE)
    return {k: result_to_json(r) for k, r in results.items()}


def test_find_span_ignores_case_and_runs_of_whitespace():
    assert find_span(NOTE, "hd3: hr 112") == (NOTE.index("HD3:"), NOTE.index("112") + 3)
    assert find_span(NOTE, "HR 999") is None and find_span(NOTE, None) is None and find_span(NOTE, "  ") is None


def test_review_page_highlights_spans_and_lists_fields(schema):
    names = ["heart_rate_bpm", "temperature_c", "sodium_meq_l", "ph"]
    sub = schema.subset(names)
    answer = {"heart_rate_bpm": {"value": "112", "unit": "bpm", "evidence": "HD3:  HR   112"},
              "temperature_c": {"value": "101.3", "unit": "F", "evidence": "temp 101.3 F <febrile>"},
              "sodium_meq_l": {"value": "145", "unit": "mEq/L", "evidence": "Na 145 on HD3"},   # not in the note
              "ph": None}
    fields = _fields(sub, answer)
    page = review_html([{"id": "p<1>", "text": NOTE}], {"p<1>": {"fields": fields}}, names)
    marks = re.findall(r'<mark id="n0-([a-z_]+)" class="(\w*)"[^>]*>(.*?)</mark>', page, flags=re.S)
    assert [(m[0], m[1]) for m in marks] == [("heart_rate_bpm", ""), ("temperature_c", "")]
    assert marks[1][2] == "temp 101.3 F &lt;febrile&gt;"           # note text is escaped, never raw HTML
    assert "<febrile>" not in page and "p&lt;1&gt;" in page
    row = re.search(r"<tr class=\"ok\"><td><a href=\"#n0-temperature_c\">temperature_c</a></td><td>(.*?)</td>"
                    r"<td>(.*?)</td><td>ok</td>", page)
    assert row and abs(float(row.group(1)) - 38.5) < 0.01 and row.group(2) == "F"   # canonical value, unit as written
    assert re.search(r'<tr class="bad"><td>sodium_meq_l</td><td>145</td><td>mEq/L</td><td>ungrounded</td>', page)
    assert '<tr class="null"><td>ph</td><td></td><td></td><td>null</td>' in page
    assert "<script" not in page and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)


def test_overlapping_spans_share_one_mark(schema):
    names = ["heart_rate_bpm", "temperature_c"]
    answer = {"heart_rate_bpm": {"value": "112", "unit": "bpm", "evidence": "HR   112, temp"},
              "temperature_c": {"value": "101.3", "unit": "F", "evidence": "temp 101.3 F"}}
    page = review_html([{"id": "a", "text": NOTE}], {"a": {"fields": _fields(schema.subset(names), answer)}}, names)
    assert page.count("<mark") == 1 and 'title="heart_rate_bpm, temperature_c"' in page
    assert 'id="n0-temperature_c"' in page                           # the table's link still lands
