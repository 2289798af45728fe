import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from survlm.units import (UnitError, ValueFormatError, mean_arterial_pressure, parse_fio2, resolve_unit,
                          to_canonical, values_match)

# (field, written unit, written value, canonical value): exact textbook conversions.
KNOWN = [
    ("temperature_c", "F", "98.6", 37.0),
    ("temperature_c", "°F", "104.0", 40.0),
    ("temperature_c", "C", "37.2", 37.2),
    ("glucose_mg_dl", "mmol/L", "5.0", 90.08),
    ("creatinine_mg_dl", "umol/L", "88.42", 1.0),
    ("creatinine_mg_dl", "µmol/L", "176.84", 2.0),
    ("bilirubin_mg_dl", "μmol/L", "17.104", 1.0),
    ("albumin_g_dl", "g/L", "35", 3.5),
    ("bun_mg_dl", "mmol/L", "10", 28.014),
    ("sodium_meq_l", "mmol/L", "140", 140.0),
    ("wbc_k_ul", "cells/uL", "8100", 8.1),
    ("wbc_k_ul", "x10^9/L", "8.1", 8.1),
    ("urine_ml_day", "L", "1.45", 1450.0),
    ("urine_ml_day", "cc", "900", 900.0),
]


@pytest.mark.parametrize("name,unit,value,expected", KNOWN)
def test_known_conversions(schema, name, unit, value, expected):
    assert to_canonical(schema[name], value, unit) == pytest.approx(expected, rel=1e-9)


def _unit_cases(schema):
    return [(f.name, u) for f in schema if f.type == "number" for u in f.units]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_unit_round_trips(schema, data):
    name, unit = data.draw(st.sampled_from(_unit_cases(schema)))
    f = schema[name]
    canonical = data.draw(st.floats(min_value=f.range[0], max_value=f.range[1], allow_nan=False))
    written = f.units[unit].from_canonical(canonical)
    assert f.units[unit].to_canonical(written) == pytest.approx(canonical, rel=1e-9, abs=1e-9)
    # writing 6 decimals rounds by up to 5e-7 in the written unit: scaled by the conversion's slope
    conv = f.units[unit]
    slope = abs(conv.factor / conv.divide)
    assert to_canonical(f, f"{written:.6f}", unit) == pytest.approx(canonical, rel=1e-6, abs=1e-6 * slope)


@settings(max_examples=200, deadline=None)
@given(systolic=st.integers(40, 300), diastolic=st.integers(10, 200))
def test_map_from_cuff_pressure(schema, systolic, diastolic):
    f = schema["mean_bp_mmhg"]
    if systolic < diastolic:
        with pytest.raises(ValueFormatError):
            to_canonical(f, f"{systolic}/{diastolic}", "mmHg")
    else:
        assert to_canonical(f, f"{systolic}/{diastolic}", None) == pytest.approx((systolic + 2 * diastolic) / 3)
        assert mean_arterial_pressure(systolic, diastolic) >= diastolic


@pytest.mark.parametrize("written,fraction", [("40%", 0.4), ("0.4", 0.4), ("40", 0.4), ("RA", 0.21),
                                              ("room air", 0.21), ("100%", 1.0), ("1.0", 1.0)])
def test_fio2_forms(written, fraction):
    assert parse_fio2(written) == pytest.approx(fraction)


@pytest.mark.parametrize("bad", ["15%", "0.1", "120%", "abc", ""])
def test_fio2_rejects_impossible(bad):
    with pytest.raises(ValueFormatError):
        parse_fio2(bad)


def test_pf_ratio_from_pao2_and_fio2(schema):
    f = schema["pao2_fio2"]
    assert to_canonical(f, "80/40%", None) == pytest.approx(200.0)
    assert to_canonical(f, "84/RA", "mmHg") == pytest.approx(400.0)
    assert to_canonical(f, "250", None) == 250.0


def test_units_are_field_specific(schema):
    # mmol/L means glucose x18 for glucose, urea x2.8 for BUN, x1 for sodium.
    assert to_canonical(schema["glucose_mg_dl"], "10", "mmol/L") != to_canonical(schema["bun_mg_dl"], "10", "mmol/L")
    with pytest.raises(UnitError):
        resolve_unit(schema["creatinine_mg_dl"], "g/L")
    with pytest.raises(UnitError):  # temperature must say C or F
        resolve_unit(schema["temperature_c"], None)
    assert resolve_unit(schema["sodium_meq_l"], None) == "mEq/L"


def test_values_match_tolerance():
    assert values_match(101.0, 100.0)
    assert not values_match(101.5, 100.0)
    assert values_match(0.06, 0.0, tolerance=0.06)
    assert not values_match(0.2, 0.0)
