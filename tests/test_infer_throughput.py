"""benchmarks/infer_throughput.py: a serving variant's answers read against gold labels and the default's."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

from conftest import record, write_prepared

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "infer_throughput.py"
spec = importlib.util.spec_from_file_location("infer_throughput", BENCHMARK)
infer_throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(infer_throughput)


def sodium(value: str) -> str:
    return '{"sodium_meq_l":{"value":"%s","unit":"mEq/L","evidence":"HD3 Na %s"}}' % (value, value)


def test_answers_are_scored_and_compared_field_by_field(tmp_path):
    prepared = write_prepared(tmp_path / "prepared", {"test": [record(i, split="test") for i in range(3)]})
    quality = infer_throughput.AnswerQuality(SimpleNamespace(prepared=str(prepared), notes=2))
    fields = len(quality.schema.fields)
    default = [sodium("138"), sodium("138")]
    other = [sodium("138"), sodium("141")]          # the second note's day-4 value
    assert quality.accuracy(default) == 1.0
    assert quality.accuracy(other) == 0.5
    assert quality.same_fields(default, other) == f"{2 * fields - 1}/{2 * fields}"
    assert quality.same_fields(default, default) == f"{2 * fields}/{2 * fields}"
