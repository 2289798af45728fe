import pytest

from survlm.schema import SchemaError, load_schema, system_prompt, target_json_schema
from survlm.split import assign_splits, record_order

FIELDS = ["age", "sex", "disease_group", "cancer", "diabetes", "dementia", "num_comorbidities", "coma_score",
          "mean_bp_mmhg", "heart_rate_bpm", "resp_rate", "temperature_c", "wbc_k_ul", "pao2_fio2", "albumin_g_dl",
          "bilirubin_mg_dl", "creatinine_mg_dl", "sodium_meq_l", "ph", "glucose_mg_dl", "bun_mg_dl", "urine_ml_day"]


def test_bundled_schema_is_the_contract(schema):
    assert schema.names == FIELDS and schema.version == 1
    assert {f.source for f in schema} >= {"num_age", "fac_sex", "num_pafi", "num_urine"}
    assert all(f.day == 3 for f in schema if f.name not in FIELDS[:7])
    prompt = system_prompt(schema)
    assert all(f"- {n}:" in prompt for n in FIELDS) and "hospital day 3" in prompt


def test_user_schema_file(tmp_path, schema):
    p = tmp_path / "mine.yaml"
    p.write_text("name: mine\nversion: 2\nfields:\n  lactate:\n    type: number\n    unit: mmol/L\n"
                 "    day: 3\n    range: [0, 30]\n    description: Lactate.\n    rule: The day-3 lactate.\n"
                 "    units: {mmol/L: 1, mg/dL: {divide: 9.008}}\n")
    mine = load_schema(p)
    assert mine.names == ["lactate"] and mine["lactate"].units["mg/dL"].to_canonical(18.016) == pytest.approx(2.0)
    assert target_json_schema(mine)["required"] == ["lactate"]
    assert schema.subset(["age", "ph"]).names == ["age", "ph"]
    with pytest.raises(SchemaError, match="unknown field"):
        schema.subset(["lactate"])


def test_day_label_defaults_to_the_day_the_fields_share(tmp_path):
    field = "  {name}:\n    type: number\n    unit: g\n    units: {{g: 1}}\n    description: d\n    rule: r\n    day: {day}\n"
    p = tmp_path / "days.yaml"
    p.write_text("name: x\nversion: 1\nfields:\n" + field.format(name="a", day=5) + field.format(name="b", day=5))
    assert load_schema(p).day_label == "hospital day 5" and "hospital day 5" in system_prompt(load_schema(p))
    p.write_text("name: x\nversion: 1\nday_label: the second ICU day\nfields:\n" + field.format(name="a", day=5))
    assert load_schema(p).day_label == "the second ICU day"
    p.write_text("name: x\nversion: 1\nfields:\n" + field.format(name="a", day=5) + field.format(name="b", day=2))
    with pytest.raises(SchemaError, match=r"days.yaml: fields are read on days 2, 5: state a day_label"):
        load_schema(p)


@pytest.mark.parametrize("body,message", [
    ("name: x\nversion: 1\n", "needs a non-empty 'fields'"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: text\n", "field a: type must be one of"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: number\n    description: d\n    rule: r\n    unit: mg\n",
     "field a: a number field needs 'unit' listed in 'units'"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: category\n    description: d\n    rule: r\n    categories: [x]\n",
     "field a: a category field needs at least two categories"),
    ("name: x\nfields: [\n", "not valid YAML"),
    # a repeated key would silently win: an error, naming the line of the second one
    ("name: x\nversion: 1\nfields:\n  a:\n    type: bool\n    description: d\n    rule: r\n"
     "  a:\n    type: bool\n    description: e\n    rule: s\n", ":8: duplicate key 'a'"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: category\n    description: d\n    rule: r\n"
     "    categories: male\n", "field a: categories must be a list"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: category\n    description: d\n    rule: r\n"
     "    categories: [a, A]\n", "field a: categories repeat a name"),
    # type errors in values: one line each, never a Python traceback
    ("name: x\nversion: 1\nfields:\n  a:\n    type: number\n    description: d\n    rule: r\n    unit: g\n"
     "    units: {g: 1, kg: {factor: many}}\n", "field a: unit kg: a unit conversion is a number"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: number\n    description: d\n    rule: r\n    unit: g\n"
     "    units: [g]\n", "field a: 'units' must be a mapping"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: bool\n    description: d\n    rule: r\n    range: [a, 3]\n",
     "field a: range must be [low, high]"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: bool\n    description: d\n    rule: r\n    decimals: two\n",
     "field a: decimals must be a whole number"),
    ("name: x\nversion: one\nfields:\n  a:\n    type: bool\n    description: d\n    rule: r\n",
     "version must be a whole number"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: bool\n    description: d\n    rule: r\n    day: true\n",
     "field a: day must be a positive integer"),
    ("name: x\nversion: 1\nfields: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML"),
    # a flag read from a list: the flag is a yes/no with names, the list a count field of the schema
    ("name: x\nversion: 1\nfields:\n  a:\n    type: bool\n    description: d\n    rule: r\n    listed_in: b\n",
     "field a: listed_in is for a bool field with aliases"),
    ("name: x\nversion: 1\nfields:\n  a:\n    type: bool\n    description: d\n    rule: r\n    aliases: [A]\n"
     "    listed_in: b\n  b:\n    type: bool\n    description: d\n    rule: r\n",
     "field a: listed_in 'b' is not a count field of this schema"),
])
def test_bad_schema_files_name_file_and_field(tmp_path, body, message):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    with pytest.raises(SchemaError) as exc:
        load_schema(p)
    assert str(exc.value).startswith(str(p)) and message in str(exc.value)


def test_undecodable_schema_file_is_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"name: x\nversion: 1\nfields: {a: \xff}\n")
    with pytest.raises(SchemaError, match=r"bad.yaml: undecodable bytes"):
        load_schema(p)


def test_split_is_stratified_seeded_and_disjoint():
    ids = [f"p{i}" for i in range(1000)]
    events = [int(i % 3 == 0) for i in range(1000)]
    frac = {"train": 0.6, "val": 0.1, "pairs": 0.1, "test": 0.2}
    a = assign_splits(ids, events, frac, seed=1)
    assert a == assign_splits(ids, events, frac, seed=1) and a != assign_splits(ids, events, frac, seed=2)
    assert set(a) == set(ids)
    for split, share in frac.items():
        members = [i for i in ids if a[i] == split]
        assert abs(len(members) / 1000 - share) < 0.01
        rate = sum(events[int(i[1:])] for i in members) / len(members)
        assert abs(rate - 1 / 3) < 0.02
    with pytest.raises(ValueError):
        assign_splits(ids, events, {"train": 0.5}, seed=1)


def test_split_files_are_in_a_random_order_so_heads_are_samples():
    # SUPPORT2-like source order: a lab is missing for the first 40 % of patients (an early study phase).
    ids = [f"support2-{i:05d}" for i in range(2000)]
    missing = {i for k, i in enumerate(ids) if k < 800}
    order = record_order(list(reversed(ids)), seed=42)
    assert sorted(order) == sorted(ids) and order == record_order(ids, seed=42) != record_order(ids, seed=43)
    head = order[:100]  # what `select_ckpt.val_notes: 100` scores
    assert 25 <= sum(i in missing for i in head) <= 55  # ~40 %, not the 100 % of the source's first 100
