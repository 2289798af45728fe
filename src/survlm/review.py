"""An evidence review page for `survlm extract --review-html`: every note with the spans the model quoted
highlighted, and beside it each field's value, unit and status, for a clinician to check the extraction.

The page contains note text, so it is written only when asked for. One self-contained HTML file: no scripts,
nothing fetched. Pure Python.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

STATUS_CLASS = {"ok": "ok", "null": "null"}   # anything else is a problem worth a look

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:20px;color:#222}
.note{display:flex;gap:20px;border-top:2px solid #ccc;padding:12px 0}
.text{flex:3;white-space:pre-wrap;font:12.5px/1.5 ui-monospace,Menlo,Consolas,monospace;max-height:720px;overflow:auto}
.fields{flex:2}table{border-collapse:collapse;font-size:12.5px}th,td{padding:2px 7px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}mark{background:#fff1a8;border-bottom:2px solid #d4a000}mark.bad{background:#ffd6d6;
border-bottom-color:#c00}mark:target{outline:2px solid #06c}sup{color:#555;font-size:9px}
tr.bad td{color:#b00}tr.null td{color:#888}.legend{color:#555;font-size:13px}
"""


def find_span(note: str, evidence: str | None) -> tuple[int, int] | None:
    """Where the quoted evidence sits in the note: the first match, ignoring case and runs of whitespace. A
    paraphrased quote is not found (and its value may still be ok: survlm.extraction checks numbers, not quotes)."""
    if not evidence or not evidence.strip():
        return None
    pattern = r"\s+".join(re.escape(tok) for tok in evidence.split())
    m = re.search(pattern, note, flags=re.IGNORECASE)
    return (m.start(), m.end()) if m else None


def _written(field: dict) -> dict:
    w = field.get("written")
    return w if isinstance(w, dict) else {}


def _highlight(note: str, spans: list[tuple[int, int, str, bool]], anchor: str) -> str:
    """Note text with <mark>s; overlapping spans merge into one mark that names every field."""
    merged: list[list] = []
    for start, end, name, bad in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2].append(name)
            merged[-1][3] = merged[-1][3] or bad
        else:
            merged.append([start, end, [name], bad])
    out, pos = [], 0
    for start, end, names, bad in merged:
        ids = "".join(f'<a id="{anchor}-{html.escape(n)}"></a>' for n in names[1:])
        out.append(html.escape(note[pos:start]))
        out.append(f'{ids}<mark id="{anchor}-{html.escape(names[0])}" class="{"bad" if bad else ""}" '
                   f'title="{html.escape(", ".join(names))}">{html.escape(note[start:end])}</mark>'
                   f'<sup>{html.escape(", ".join(names))}</sup>')
        pos = end
    out.append(html.escape(note[pos:]))
    return "".join(out)


def note_section(index: int, note_id: str, note: str, fields: dict[str, dict], names: list[str]) -> str:
    anchor = f"n{index}"
    spans, rows = [], []
    for name in names:
        f = fields.get(name, {"status": "missing_field"})
        w = _written(f)
        status = f.get("status", "")
        bad = status not in STATUS_CLASS
        span = find_span(note, w.get("evidence"))
        if span:
            spans.append((span[0], span[1], name, bad))
        value = f.get("value") if status == "ok" else w.get("value")
        field_cell = f'<a href="#{anchor}-{html.escape(name)}">{html.escape(name)}</a>' if span else html.escape(name)
        rows.append(f'<tr class="{STATUS_CLASS.get(status, "bad")}"><td>{field_cell}</td>'
                    f"<td>{html.escape('' if value is None else str(value))}</td>"
                    f"<td>{html.escape(str(w.get('unit') or ''))}</td><td>{html.escape(status)}</td></tr>")
    return (f'<section class="note"><div class="text"><h3>{html.escape(str(note_id))}</h3>'
            f"{_highlight(note, spans, anchor)}</div><div class='fields'><table><tr><th>field</th><th>value</th>"
            f"<th>unit as written</th><th>status</th></tr>{''.join(rows)}</table></div></section>")


def review_html(records: list[dict], rows: dict[str, dict], names: list[str], title: str = "survlm evidence review") -> str:
    """records: {"id", "text"} per note; rows: extraction rows by id (their "fields" as written by run_tasks)."""
    body = [note_section(i, r["id"], r["text"], rows[r["id"]]["fields"], names)
            for i, r in enumerate(records) if r["id"] in rows]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>" + html.escape(title)
            + "</title><style>" + CSS + "</style></head><body><h1>" + html.escape(title) + "</h1>"
            + "<p class='legend'>Highlighted: the span the model quoted as evidence (red: the field's status is not "
              "ok). Values are canonical (schema units) when the status is ok, else as written. Contains note "
              "text: share it as you would the notes.</p>" + "".join(body) + "</body></html>\n")


def write_review_html(path: str | Path, records: list[dict], rows: dict[str, dict], names: list[str]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(review_html(records, rows, names), encoding="utf-8")
    tmp.replace(path)
