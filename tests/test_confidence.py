"""Field confidence from token log-probabilities, its calibration, and abstention."""
import math

from survlm.confidence import (Answered, Calibration, Curve, abstained_row, field_confidences, fit_calibration,
                               value_spans)
from survlm.extraction import FieldResult
from survlm.predictions import result_to_json

ANSWER = '{"age":{"value":"63","evidence":"63-year-old"},"temp":{"value":"101.2","unit":"F","evidence":"T 101.2F"},' \
         '"albumin":null}'


def test_value_spans_stop_before_the_evidence_quote():
    spans = value_spans(ANSWER, ["age", "temp", "albumin"])
    assert ANSWER[slice(*spans["age"])] == '{"value":"63",'
    assert ANSWER[slice(*spans["temp"])] == '{"value":"101.2","unit":"F",'
    assert ANSWER[slice(*spans["albumin"])] == "null"
    assert value_spans("no json here", ["age"]) == {}
    assert set(value_spans('{"age":{"value":"6', ["age"])) == set()   # torn answer: nothing readable


def test_confidence_is_the_product_over_the_value_tokens_only():
    # tokens: split the answer into pieces; give the evidence and the age value distinct log-probabilities
    pieces, logprobs = [], []
    for piece in ['{"age":', '{"value":"', '63', '",', '"evidence":"63-year-old"}', ',"temp":', '{"value":"',
                  '101', '.2', '","unit":"F",', '"evidence":"T 101.2F"}', ',"albumin":', 'null', '}']:
        pieces.append(piece)
        logprobs.append({"63": math.log(0.5), "101": math.log(0.9), ".2": math.log(0.8), "null": math.log(0.3),
                         '"evidence":"63-year-old"}': math.log(0.01)}.get(piece, 0.0))
    conf = field_confidences(ANSWER, pieces, logprobs, ["age", "temp", "albumin"])
    assert conf["age"] == 0.5                       # the evidence's 0.01 is not counted
    assert abs(conf["temp"] - 0.72) < 1e-6
    assert conf["albumin"] == 0.3
    # a forced prefix (unconstrained decoding) is not generated: tokens cover the end of the text only
    assert field_confidences(ANSWER, pieces[1:], logprobs[1:], ["age"])["age"] == 0.5
    assert field_confidences(ANSWER, ["x"], [0.0], ["age"]) == {}   # tokens that are not the answer


def test_isotonic_curve_is_monotone_and_matches_the_rates():
    curve = Curve.fit([(0.1, 0), (0.2, 1), (0.3, 0), (0.9, 1), (0.95, 1)])
    assert list(curve.value) == sorted(curve.value)
    # the rates of the pooled blocks: 0 at 0.1, (1 + 0) / 2 over 0.2-0.3 (a violation pooled), 1 from 0.9
    assert [curve(x) for x in (0.05, 0.1, 0.2, 0.3, 0.9, 1.0)] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    assert Curve()(0.5) is None


def _answered(status, raw, correct, gold_null):
    return Answered(FieldResult(status, value=1.0 if status == "ok" else None), raw, correct, gold_null)


def test_threshold_turns_unsure_fabrications_into_nulls_and_never_loses_on_validation():
    answers = ([_answered("ok", 0.2, False, True)] * 8 + [_answered("ok", 0.25, True, False)] * 2
               + [_answered("ok", 0.9, True, False)] * 30 + [_answered("null", 0.9, True, True)] * 10)
    cal = fit_calibration(answers)
    assert 0 < cal.threshold <= cal.value_curve(0.9)
    kept = [cal.abstain(a.result, cal.calibrated(a.result, a.raw)) for a in answers]
    acc = sum(a.correct_if_null if k.status == "null" else a.correct for k, a in zip(kept, answers)) / len(answers)
    raw_acc = sum(a.correct for a in answers) / len(answers)
    assert acc == 1.0 > raw_acc == 42 / 50
    assert sum(k.status == "null" for k in kept[:10]) == 8     # the sure 0.25 answers (all right) are kept
    # where abstaining would only lose, the threshold stays 0
    sure = [_answered("ok", 0.3, True, False)] * 5 + [_answered("ok", 0.9, True, False)] * 5
    assert fit_calibration(sure).threshold == 0.0
    assert Calibration.from_json(cal.to_json()) == cal


def test_abstained_row_keeps_the_value_as_candidate():
    """Below the threshold a value becomes null; so does a value a check refused, however sure the model was; an
    answer that could not be read keeps its status."""
    cal = Calibration(Curve((0.5, 1.0), (0.1, 0.9)), Curve((1.0,), (0.8,)), threshold=0.5, fitted_on=3)
    row = {"id": "n1", "fields": {"a": result_to_json(FieldResult("ok", value=2.0)),
                                  "b": result_to_json(FieldResult("ok", value=3.0)),
                                  "c": result_to_json(FieldResult("null")),
                                  "d": result_to_json(FieldResult("other_day", candidate=5.0)),
                                  "e": result_to_json(FieldResult("bad_value"))},
           "values": {"a": 2.0, "b": 3.0, "c": None, "d": None, "e": None},
           "confidence": {"a": 0.2, "b": 0.7, "c": 0.4, "d": 0.99}}
    out = abstained_row(row, cal)
    assert out["values"] == {"a": None, "b": 3.0, "c": None, "d": None, "e": None}
    assert out["fields"]["a"] == {"status": "null", "candidate": 2.0}
    assert out["fields"]["d"] == {"status": "null", "candidate": 5.0} and out["fields"]["e"]["status"] == "bad_value"
    assert out["abstained"] == ["a"] and out["refused"] == ["d"]
    assert out["confidence"] == {"a": 0.1, "b": 0.9, "c": 0.8} and out["raw_confidence"] == row["confidence"]


def test_self_consistency_votes_field_by_field_and_null_is_an_answer(schema):
    from survlm.chunking import vote_field
    from survlm.metrics import tolerance

    temp = schema.fields["temperature_c"]
    ok = lambda v: FieldResult("ok", value=v)  # noqa: E731
    null = FieldResult("null")
    assert vote_field(temp, [ok(38.0), null, ok(38.02), null, null], tolerance(temp)) == (null, 0.6)
    r, share = vote_field(temp, [ok(38.0), ok(38.0), FieldResult("bad_value"), null, ok(39.0)], tolerance(temp))
    assert r.value == 38.0 and share == 0.4
    first, _ = vote_field(temp, [ok(37.0), ok(39.0)], tolerance(temp))
    assert first.value == 37.0                               # a tie: the earliest sample
    assert vote_field(temp, [FieldResult("bad_value")] * 2, tolerance(temp))[1] == 0.0


def test_infer_calibrates_on_validation_and_evaluate_scores_the_abstaining_model(schema, tmp_path):
    """Validation answers where the unsure values are wrong: infer's calibration turns them into nulls on test,
    writes the abstaining rows where evaluate finds them, and the val score never drops."""
    import json
    import random

    from survlm.stages.evaluate import load_model_results
    from survlm.stages.infer import ABSTAINING, abstain, prediction_path

    rng = random.Random(0)
    numbers = [f for f in schema if f.type == "number"]

    def rows(prefix, n):
        labels, out = {}, []
        for i in range(n):
            gold, fields, conf = {}, {}, {}
            for f in numbers:
                present = rng.random() < 0.7
                gold[f.name] = 1.0 if present else None
                answered = present or rng.random() < 0.5            # fabricates half the empty fields ...
                fields[f.name] = result_to_json(FieldResult("ok", value=1.0) if answered else FieldResult("null"))
                conf[f.name] = 0.95 if present else rng.uniform(0.2, 0.6)   # ... and is unsure of those
            labels[f"{prefix}{i}"] = gold
            out.append({"id": f"{prefix}{i}", "fields": fields, "values": {}, "confidence": conf})
        return labels, out

    out = tmp_path / "predictions"
    (out / "decoding").mkdir(parents=True)
    val_labels, val_rows = rows("v", 40)
    test_labels, test_rows = rows("t", 10)
    (out / "decoding" / "greedy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val_rows))
    prediction_path(out, "dpo", "test").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    summary = abstain(out, schema.subset([f.name for f in numbers]),
                      [{"id": i, "labels": g} for i, g in val_labels.items()], ["test", "test_heldout"])
    raw, abstaining = summary["on_validation"]["raw"], summary["on_validation"]["abstaining"]
    assert raw["fabrication_rate"] > 0.3 and abstaining["fabrication_rate"] == 0.0
    assert abstaining["field_accuracy"] == 1.0 > raw["field_accuracy"]
    assert not prediction_path(out, ABSTAINING, "test_heldout").exists()   # no DPO answers there: nothing made up
    records = {i: {"id": i, "labels": g, "text": ""} for i, g in test_labels.items()}
    results = load_model_results(out, "test", schema, records)
    assert set(results) == {"dpo", ABSTAINING, "regex"}
    for i, gold in test_labels.items():
        assert all((results[ABSTAINING][i][name].status == "null") == (g is None) for name, g in gold.items())
