"""survlm.phases: a stage's wall time by named phase."""
import json
import subprocess
import sys
from types import SimpleNamespace

from survlm import phases as phases_module
from survlm.phases import Phases

# a process that waits a second before its clock starts: its startup must hold that second
LATE_CLOCK = """
import json, time
time.sleep(1.0)
from survlm.phases import Phases, process_age_s
print(json.dumps({"age": process_age_s(), "startup": Phases().seconds["startup"]}))
"""


def test_startup_is_the_process_age_when_the_clock_starts():
    got = json.loads(subprocess.run([sys.executable, "-c", LATE_CLOCK], capture_output=True, text=True,
                                    check=True).stdout)
    assert 1.0 <= got["age"] <= got["startup"] < 30.0


def test_phases_add_up_and_the_untimed_rest_is_other(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 4.0, 5.0, 6.0, 10.0, 12.0])
    monkeypatch.setattr(phases_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    p = Phases(startup=False)                 # 0
    with p.time("a"):                         # 1 .. 3
        pass
    with p.time("a"):                         # 4 .. 5: the same phase again adds up
        pass
    with p.time("b"):                         # 6 .. 10
        pass
    assert p.as_dict() == {"a": 3.0, "b": 4.0, "other": 5.0}   # at 12: 12 - 7 timed
