"""The extraction schema: fields, units, rules; loaded from a versioned YAML file.

Pure Python (no torch). The schema drives the system prompt, the JSON target format the
model is trained to emit, the JSON schema used to constrain decoding, and the normaliser.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

FIELD_TYPES = ("number", "category", "bool", "count")
DERIVED_FORMS = ("blood_pressure", "pf_ratio")
DEFAULT_SCHEMA = "bundled:support2-v1"


class SchemaError(ValueError):
    """A schema file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Conversion:
    """canonical = (written - subtract) * factor / divide."""

    factor: float = 1.0
    subtract: float = 0.0
    divide: float = 1.0

    def to_canonical(self, x: float) -> float:
        return (x - self.subtract) * self.factor / self.divide

    def from_canonical(self, y: float) -> float:
        return y * self.divide / self.factor + self.subtract


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    description: str
    rule: str
    source: str | None = None
    unit: str | None = None
    day: int | None = None
    decimals: int = 0
    range: tuple[float, float] | None = None
    categories: tuple[str, ...] = ()
    units: dict[str, Conversion] = field(default_factory=dict)
    implicit_unit: str | None = None
    derived: str | None = None
    # How notes name the field (number, bool, count) or each category (category: category -> names);
    # the evidence locator reads a user's labelled notes with them (survlm.evidence).
    aliases: tuple[str, ...] = ()
    category_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # A yes/no condition that a count field's list may name (diabetes in the comorbidities): an answer whose own
    # list names it (the aliases) reads as true, whatever the model wrote for the flag (survlm.extraction).
    listed_in: str | None = None

    @property
    def is_physiology(self) -> bool:
        return self.day is not None

    def in_range(self, value: float) -> bool:
        return self.range is None or self.range[0] <= value <= self.range[1]

    def unit_for_missing(self) -> str | None:
        """Unit assumed when the note writes none: declared, or the only one accepted."""
        if self.implicit_unit is not None:
            return self.implicit_unit
        if len(self.units) == 1:
            return next(iter(self.units))
        return None


@dataclass(frozen=True)
class Schema:
    name: str
    version: int
    fields: dict[str, Field]
    day_label: str            # how the prompt names the physiology fields' day
    digest: str = ""

    def __iter__(self):
        return iter(self.fields.values())

    def __getitem__(self, name: str) -> Field:
        return self.fields[name]

    @property
    def names(self) -> list[str]:
        return list(self.fields)

    def subset(self, names: list[str]) -> "Schema":
        unknown = [n for n in names if n not in self.fields]
        if unknown:
            raise SchemaError(f"schema {self.name}: unknown field(s) {', '.join(unknown)}")
        return Schema(self.name, self.version, {n: self.fields[n] for n in names}, self.day_label, self.digest)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _conversion(spec, where: str) -> Conversion:
    if _is_number(spec):
        conv = Conversion(factor=float(spec))
    elif (isinstance(spec, dict) and spec and set(spec) <= {"factor", "subtract", "divide"}
          and all(_is_number(v) for v in spec.values())):
        conv = Conversion(**{k: float(v) for k, v in spec.items()})
    else:
        raise SchemaError(f"{where}: a unit conversion is a number or {{factor, subtract, divide}} of numbers")
    if conv.factor == 0 or conv.divide == 0:
        raise SchemaError(f"{where}: conversion factor/divide must be non-zero")
    return conv


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's last-one-wins for a repeated key would silently drop a field or a unit: make it an error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                repeated = key in seen
            except TypeError:   # an unhashable key: yaml itself reports it below
                break
            if repeated:
                raise SchemaError(f"{key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def _field(name: str, spec: dict, where: str) -> Field:
    where = f"{where}: field {name}"
    if not isinstance(spec, dict):
        raise SchemaError(f"{where}: must be a mapping")
    allowed = {"type", "description", "rule", "source", "unit", "day", "decimals", "range",
               "categories", "units", "implicit_unit", "derived", "aliases", "listed_in"}
    extra = set(spec) - allowed
    if extra:
        raise SchemaError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    ftype = spec.get("type")
    if ftype not in FIELD_TYPES:
        raise SchemaError(f"{where}: type must be one of {', '.join(FIELD_TYPES)}")
    for key in ("description", "rule"):
        if not isinstance(spec.get(key), str) or not spec[key].strip():
            raise SchemaError(f"{where}: '{key}' is required text")
    if not isinstance(spec.get("units") or {}, dict):
        raise SchemaError(f"{where}: 'units' must be a mapping of unit: conversion")
    units = {str(u): _conversion(c, f"{where}: unit {u}") for u, c in (spec.get("units") or {}).items()}
    if ftype == "number":
        if spec.get("unit") is None or str(spec["unit"]) not in units:
            raise SchemaError(f"{where}: a number field needs 'unit' listed in 'units'")
        if units[str(spec["unit"])] != Conversion():
            raise SchemaError(f"{where}: the canonical unit must convert with factor 1")
    rng = spec.get("range")
    if rng is not None:
        if not (isinstance(rng, list) and len(rng) == 2 and all(_is_number(x) for x in rng) and rng[0] < rng[1]):
            raise SchemaError(f"{where}: range must be [low, high] (numbers, low < high)")
        rng = (float(rng[0]), float(rng[1]))
    raw_cats = spec.get("categories") or []
    if not isinstance(raw_cats, list) or not all(isinstance(c, (str, int, float)) and not isinstance(c, bool)
                                                 for c in raw_cats):
        raise SchemaError(f"{where}: categories must be a list, e.g. [male, female] (got {raw_cats!r:.40})")
    cats = tuple(str(c) for c in raw_cats)
    if len({c.lower() for c in cats}) != len(cats):
        raise SchemaError(f"{where}: categories repeat a name (case is ignored)")
    if ftype == "category" and len(cats) < 2:
        raise SchemaError(f"{where}: a category field needs at least two categories")
    implicit = spec.get("implicit_unit")
    if implicit is not None and str(implicit) not in units:
        raise SchemaError(f"{where}: implicit_unit {implicit!r} is not in 'units'")
    derived = spec.get("derived")
    if derived is not None and derived not in DERIVED_FORMS:
        raise SchemaError(f"{where}: derived must be one of {', '.join(DERIVED_FORMS)}")
    day = spec.get("day")
    if day is not None and (not isinstance(day, int) or isinstance(day, bool) or day < 1):
        raise SchemaError(f"{where}: day must be a positive integer")
    decimals = spec.get("decimals", 0)
    if not isinstance(decimals, int) or isinstance(decimals, bool) or not 0 <= decimals <= 12:
        raise SchemaError(f"{where}: decimals must be a whole number from 0 to 12")
    for key in ("source", "unit", "implicit_unit", "listed_in"):
        if spec.get(key) is not None and not isinstance(spec[key], (str, int, float)):
            raise SchemaError(f"{where}: '{key}' must be text")
    aliases, category_aliases = _aliases(spec.get("aliases"), ftype, cats, where)
    if spec.get("listed_in") is not None and (ftype != "bool" or not aliases):
        raise SchemaError(f"{where}: listed_in is for a bool field with aliases (the names a list item gives it)")
    return Field(
        name=name, type=ftype, description=spec["description"].strip(), rule=spec["rule"].strip(),
        source=spec.get("source"), unit=None if spec.get("unit") is None else str(spec["unit"]),
        day=day, decimals=decimals, range=rng, categories=cats, units=units,
        implicit_unit=None if implicit is None else str(implicit), derived=derived,
        aliases=aliases, category_aliases=category_aliases,
        listed_in=None if spec.get("listed_in") is None else str(spec["listed_in"]),
    )


def _aliases(spec, ftype: str, cats: tuple[str, ...], where: str) -> tuple[tuple[str, ...], dict]:
    """`aliases`: a list of names (number, bool, count) or, for a category field, category -> list of names."""
    def names(v, at: str) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise SchemaError(f"{at}: aliases must be a list of non-empty strings")
        return tuple(x.strip() for x in v)

    if spec is None:
        return (), {}
    if ftype != "category":
        return names(spec, where), {}
    if not isinstance(spec, dict):
        raise SchemaError(f"{where}: aliases of a category field map each category to a list of names")
    unknown = [str(c) for c in spec if str(c) not in cats]
    if unknown:
        raise SchemaError(f"{where}: aliases for unknown categor(ies) {', '.join(unknown)}")
    return (), {str(c): names(v, f"{where}: aliases {c}") for c, v in spec.items()}


def load_schema(path: str | Path = DEFAULT_SCHEMA) -> Schema:
    """Load `bundled:NAME` (shipped with survlm) or a user's YAML/JSON schema file."""
    if str(path).startswith("bundled:"):
        name = str(path).split(":", 1)[1]
        ref = resources.files("survlm.schemas") / f"{name}.yaml"
        if not ref.is_file():
            raise SchemaError(f"{path}: no bundled schema named {name!r}")
        text, where = ref.read_text(encoding="utf-8"), str(path)
    else:
        p = Path(path)
        if not p.is_file():
            raise SchemaError(f"{p}: schema file not found")
        try:
            text, where = p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError as exc:
            raise SchemaError(f"{p}: undecodable bytes at byte {exc.start} (not UTF-8)") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except SchemaError as exc:
        raise SchemaError(f"{where}:{exc}") from None
    except (yaml.YAMLError, RecursionError) as exc:
        first = str(exc).splitlines()[0] if isinstance(exc, yaml.YAMLError) else "nested too deeply"
        raise SchemaError(f"{where}: not valid YAML/JSON ({first})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("fields"), dict) or not raw["fields"]:
        raise SchemaError(f"{where}: needs a non-empty 'fields' mapping")
    for key in ("name", "version"):
        if key not in raw:
            raise SchemaError(f"{where}: '{key}' is required")
    if not (isinstance(raw["version"], int) and not isinstance(raw["version"], bool)
            or isinstance(raw["version"], str) and raw["version"].isdigit()):
        raise SchemaError(f"{where}: version must be a whole number (got {raw['version']!r:.40})")
    if not isinstance(raw["name"], (str, int)) or isinstance(raw["name"], bool):
        raise SchemaError(f"{where}: name must be text")
    fields = {str(n): _field(str(n), s, where) for n, s in raw["fields"].items()}
    for f in fields.values():
        if f.listed_in is not None and (f.listed_in not in fields or fields[f.listed_in].type != "count"):
            raise SchemaError(f"{where}: field {f.name}: listed_in {f.listed_in!r} is not a count field of this schema")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return Schema(str(raw["name"]), int(raw["version"]), fields, _day_label(raw, fields, where), digest)


def _day_label(raw: dict, fields: dict[str, Field], where: str) -> str:
    """The schema's `day_label`, or one made from the day its physiology fields share (`hospital day 3`)."""
    if raw.get("day_label") is not None:
        return str(raw["day_label"])
    days = sorted({f.day for f in fields.values() if f.day is not None})
    if len(days) > 1:
        raise SchemaError(f"{where}: fields are read on days {', '.join(map(str, days))}: state a day_label that "
                          "names them for the prompt")
    return f"hospital day {days[0]}" if days else "the note's day"


# ---------------------------------------------------------------------------------------------
# What the model is asked to write. One JSON object, keys = field names in schema order:
#   number:   {"value": "<number or S/D or PaO2/FiO2 as written>", "unit": "<as written or null>",
#              "evidence": "<verbatim span>"}  or null when the note has no value for the rule's day
#   category: {"value": "<one category>", "evidence": "<verbatim span or null>"}
#   bool:     {"value": true|false, "evidence": "<verbatim span or null>"}   (null: nothing to quote)
#   count:    {"value": ["<item as written>", ...]}   (code counts; the model never does arithmetic)
# ---------------------------------------------------------------------------------------------
# At most 9 digits before the point and 6 after: more than any chart value needs, and a bound on what a model
# that runs on in digits (the zero-shot base does, to max_new_tokens) can write before it must close the value.
# Optional parts as `(...|)`, not `(...)?`: xgrammar's JSON-schema patterns let one more digit through after a
# bounded repeat followed by an optional group (tests/test_render.py holds it to Python's `re`).
NUMBER_PATTERN = r"^-?[0-9]{1,9}(\.[0-9]{1,6}|)(/([0-9]{1,9}(\.[0-9]{1,6}|)%?|RA)|)$"


def field_json_schema(f: Field) -> dict:
    evidence = {"type": "string", "minLength": 1, "maxLength": 200}
    if f.type == "number":
        item = {
            "type": "object",
            "properties": {
                # no maxLength next to the pattern: xgrammar (vLLM's and our HF constraint) rejects the pair;
                # the pattern bounds its digits instead
                "value": {"type": "string", "pattern": NUMBER_PATTERN},
                "unit": {"type": ["string", "null"], "maxLength": 16},
                "evidence": evidence,
            },
            "required": ["value", "unit", "evidence"],
            "additionalProperties": False,
        }
        return {"anyOf": [item, {"type": "null"}]}
    if f.type == "category":
        return {
            "type": "object",
            "properties": {"value": {"type": "string", "enum": list(f.categories)},
                           "evidence": {"anyOf": [evidence, {"type": "null"}]}},
            "required": ["value", "evidence"],
            "additionalProperties": False,
        }
    if f.type == "bool":
        return {
            "type": "object",
            "properties": {"value": {"type": "boolean"}, "evidence": {"anyOf": [evidence, {"type": "null"}]}},
            "required": ["value", "evidence"],
            "additionalProperties": False,
        }
    return {
        "type": "object",
        "properties": {"value": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 80},
                                 "maxItems": int(f.range[1]) if f.range else 20}},
        "required": ["value"],
        "additionalProperties": False,
    }


def target_json_schema(schema: Schema) -> dict:
    """JSON Schema of the model's answer; used to constrain decoding (vLLM / HF logits processors)."""
    return {
        "type": "object",
        "properties": {f.name: field_json_schema(f) for f in schema},
        "required": schema.names,
        "additionalProperties": False,
    }


def answer_prefix(schema: Schema) -> str:
    """The opening every answer must have: the JSON object and its first key (the schema fixes the order).

    Unconstrained decoding forces it into the prompt: it costs nothing a correct answer would not write
    anyway, and stops a briefly tuned model (or the zero-shot base) drifting into prose first."""
    return '{"' + schema.names[0] + '":'


PROMPT_STYLES = ("full", "brief")


def system_prompt(schema: Schema, style: str = "full") -> str:
    """The instruction the model sees, generated from the schema so the two cannot drift.

    `full` states every field's rule (~800 tokens for the bundled schema); `brief` names the keys
    and their kinds only (~250 tokens), for CPU runs where every prompt token costs training time.
    """
    if style not in PROMPT_STYLES:
        raise SchemaError(f"prompt style must be one of {', '.join(PROMPT_STYLES)} (got {style!r})")
    if style == "brief":
        keys = []
        for f in schema:
            if f.type == "category":
                keys.append(f"{f.name} ({'|'.join(f.categories)})")
            elif f.type == "count":
                keys.append(f"{f.name} (list of items)")
            else:
                keys.append(f.name)
        return (f"Extract one JSON object from the clinical note. Physiology is the {schema.day_label} value only; "
                "if that day has none, null (never another day). Copy value and unit as written, with the "
                "copied text as evidence. Keys: " + ", ".join(keys) + ".")
    lines = [
        f"Extract these fields from the clinical note. Physiology is the value on {schema.day_label} only; "
        f"if that day has no value, answer null. Never use a value from another day.",
        "Copy numbers and units exactly as written; do not convert or calculate. "
        "'evidence' is the exact text you copied from the note.",
        "Answer with one JSON object with these keys, in order:",
    ]
    for f in schema:
        if f.type == "category":
            kind = "one of " + " | ".join(f.categories)
        elif f.type == "bool":
            kind = "true/false"
        elif f.type == "count":
            kind = "list of items"
        else:
            kind = "value, unit" + ("" if f.unit in ("", None) else f" (canonical {f.unit})")
        lines.append(f"- {f.name}: {kind}. {f.rule}")
    return "\n".join(lines)

